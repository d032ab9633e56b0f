"""The aiohttp server classes regproxy uses, imported from their own modules."""

# `aiohttp.web` also imports the application framework regproxy never uses: routing, static
# files (which read the system's MIME table at import), websockets and a command line
# (argparse), about 0.5 MiB in every worker (issue 24). The admin listener's runner, which
# imports the application framework, is imported only where it is configured.

from aiohttp.helpers import RequestKey
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse, json_response
from aiohttp.web_server import Server

__all__ = ["BaseRequest", "RequestKey", "Response", "Server", "StreamResponse", "json_response"]
