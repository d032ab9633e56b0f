-- wrk script for bench/run.py: `wrk ... -s wrk-report.lua URL -- METHOD AUTHORIZATION [ACCEPT]`
-- (AUTHORIZATION is a whole header value, or "-" for none; ACCEPT an Accept header value).
-- Prints one JSON line at the end.
function init(args)
  wrk.method = args[1]
  if args[2] ~= "-" then
    wrk.headers["Authorization"] = args[2]
  end
  if args[3] then
    wrk.headers["Accept"] = args[3]
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "failed": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
