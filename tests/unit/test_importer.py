"""`regproxy import`: Apache httpd.conf and nginx.conf like the recipes -> loadable regproxy YAML
whose decisions are the ones the original configuration meant, every untranslated directive a
`file:line` note, malformed input a ValueError naming file and line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.conf.config import Config, Listen, load
from proxy.core.problems import Problem
from proxy.http.routes import ACTIONS
from proxy.importer.translate import Imported, import_config
from proxy.policy.identity import Identity
from proxy.policy.rules import decide, recipe_rules

# The recipe's httpd.conf as the docs write it, sections included (shipped for the README).
RECIPE_HTTPD = (Path(__file__).parents[2] / "conf/examples/recipe-httpd.conf").read_text()

RECIPE_ACCESS = """    <Limit GET HEAD>
      Require valid-user
    </Limit>

    # Write access to docker-deployer only
    <Limit POST PUT DELETE PATCH>
      Require group pusher
    </Limit>
"""

# The classic nginx recipe from the distribution docs.
RECIPE_NGINX = r"""events {
    worker_connections  1024;
}

http {

  upstream docker-registry {
    server registry:5000;
  }

  ## Set a variable to help us decide if we need to add the
  ## 'Docker-Distribution-Api-Version' header.
  ## The registry always sets this header.
  ## In the case of nginx performing auth, the header is unset
  ## since nginx is auth-ing before proxying.
  map $upstream_http_docker_distribution_api_version $docker_distribution_api_version {
    '' 'registry/2.0';
  }

  server {
    listen 443 ssl;
    server_name myregistrydomain.com;

    # SSL
    ssl_certificate /etc/nginx/conf.d/domain.crt;
    ssl_certificate_key /etc/nginx/conf.d/domain.key;

    # Recommendations from https://raymii.org/s/tutorials/Strong_SSL_Security_On_nginx.html
    ssl_protocols TLSv1.1 TLSv1.2;
    ssl_ciphers 'EECDH+AESGCM:EDH+AESGCM:AES256+EECDH:AES256+EDH';
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;

    # disable any limits to avoid HTTP 413 for large image uploads
    client_max_body_size 0;

    # required to avoid HTTP 411: see Issue #1486 (https://github.com/moby/moby/issues/1486)
    chunked_transfer_encoding on;

    location /v2/ {
      # Do not allow connections from docker 1.5 and earlier
      # docker pre-1.6.0 did not properly set the user agent on ping, catch "Go *" user agents
      if ($http_user_agent ~ "^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$" ) {
        return 404;
      }

      # To add basic authentication to v2 use auth_basic setting.
      auth_basic "Registry realm";
      auth_basic_user_file /etc/nginx/conf.d/nginx.htpasswd;

      ## If $docker_distribution_api_version is empty, the header is not added.
      ## See the map directive above where this variable is defined.
      add_header 'Docker-Distribution-Api-Version' $docker_distribution_api_version always;

      proxy_pass                          http://docker-registry;
      proxy_set_header  Host              $http_host;   # required for docker client's sake
      proxy_set_header  X-Real-IP         $remote_addr; # pass on real client's IP
      proxy_set_header  X-Forwarded-For   $proxy_add_x_forwarded_for;
      proxy_set_header  X-Forwarded-Proto $scheme;
      proxy_read_timeout                  900;
    }
  }
}
"""

NGINX_AUTH = """      auth_basic "Registry realm";
      auth_basic_user_file /etc/nginx/conf.d/nginx.htpasswd;
"""

ANON = Identity(None)
ALICE = Identity("alice")  # a valid user in no group
BOB = Identity("bob", frozenset({"readers"}))
PAT = Identity("pat", frozenset({"pusher"}))
DEV = Identity("dev", frozenset({"deployers"}))
ADMIN = Identity("admin")
ADMIN_PUSHER = Identity("admin", frozenset({"pusher"}))
WHO = {"anon": ANON, "alice": ALICE, "bob": BOB, "pat": PAT, "dev": DEV, "admin": ADMIN}
PULL, ALL = {"pull"}, {"pull", "push", "delete"}


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def written(tmp_path: Path, imported: Imported) -> Config:
    """What `regproxy serve -c` would load from the written file."""
    path = tmp_path / "regproxy.yaml"
    path.write_text(imported.yaml_text, encoding="utf-8")
    return load(path)


def allowed(config: Config, who: Identity) -> set[str]:
    return {a for a in ACTIONS if decide(config.rules, who, a, "team/app").allowed}


def notes_matching(imported: Imported, pattern: str) -> list[Problem]:
    return [n for n in imported.notes if re.search(pattern, str(n))]


def httpd_with(access: str, extra: str = "") -> str:
    """The recipe with other access rules in its <Location /v2> (and `extra` after it); rules
    with their own `Order` replace the recipe's `Order deny,allow` / `Allow from all`."""
    text = RECIPE_HTTPD.replace(RECIPE_ACCESS, access)
    if "Order" in access:
        text = text.replace("    Order deny,allow\n    Allow from all\n", "", 1)
    return text.replace("  </Location>\n", f"  </Location>\n{extra}", 1)


def nginx_with(location: str) -> str:
    """The nginx recipe with other access rules in its `location /v2/`."""
    return RECIPE_NGINX.replace(NGINX_AUTH, location)


# ---------------------------------------------------------------- the Apache recipe
def test_recipe_httpd_becomes_the_recipe_config(tmp_path: Path) -> None:
    imported = import_config(RECIPE_HTTPD, "auth/httpd.conf")
    assert imported.yaml_text.splitlines()[0].startswith("# Imported from auth/httpd.conf")
    config = written(tmp_path, imported)
    assert config.listen == Listen("0.0.0.0", 5043)
    assert config.upstream == "http://registry:5000"
    assert config.htpasswd == Path("/usr/local/apache2/conf/httpd.htpasswd")
    assert config.groups == Path("/usr/local/apache2/conf/httpd.groups")
    assert config.tls_cert == Path("/usr/local/apache2/conf/domain.crt")
    assert config.tls_key == Path("/usr/local/apache2/conf/domain.key")
    assert (config.push_group, config.realm) == ("pusher", "Registry Authentication")
    assert config.acl is None and config.rules == recipe_rules("pusher")
    assert "push_group: pusher\n" in imported.yaml_text and "acl:" not in imported.yaml_text


@pytest.mark.parametrize(
    ("who", "expected"),
    [("anon", set()), ("alice", PULL), ("bob", PULL), ("pat", ALL), ("dev", PULL)],
)
def test_recipe_httpd_decisions(tmp_path: Path, who: str, expected: set[str]) -> None:
    assert allowed(written(tmp_path, import_config(RECIPE_HTTPD, "httpd.conf")), WHO[who]) == (
        expected
    )


@pytest.mark.parametrize(
    ("needle", "why"),
    [
        ("SSLCipherSuite", "own fixed TLS"),
        ("SSLProtocol", "own fixed TLS"),
        ("SSLCompression", "own fixed TLS"),
        ("SSLHonorCipherOrder", "own fixed TLS"),
        ("Header always set", "sets Docker-Distribution-Api-Version itself"),
        ("Header onsuccess set", "sets Docker-Distribution-Api-Version itself"),
        ("RequestHeader set", "sets X-Forwarded-Proto: https itself"),
        ("Order deny,allow", "mod_access_compat is not translated; here it restricts nothing"),
        ("Allow from all", "mod_access_compat is not translated; here it restricts nothing"),
        ("ProxyPass /error/ !", "proxies only /v2"),
        ("Listen 5043", r"0\.0\.0\.0:5043 .*loopback-only 127\.0\.0\.1:5043"),
        ("AuthUserFile", "inside the httpd container.*/etc/regproxy/httpd.htpasswd"),
        ("AuthGroupFile", "inside the httpd container"),
        ("SSLCertificateFile", "inside the httpd container"),
        ("ErrorLog", "standard error"),
        ("CustomLog", "access log"),
        ("<Directory />", "serves no files"),
    ],
)
def test_recipe_httpd_notes(needle: str, why: str) -> None:
    imported = import_config(RECIPE_HTTPD, "httpd.conf")
    line = line_of(RECIPE_HTTPD, needle)
    found = [n for n in imported.notes if n.line == line]
    assert len(found) == 1, imported.notes
    assert re.fullmatch(rf"httpd\.conf:{line}: \S.* — .*{why}.*", str(found[0]))


@pytest.mark.parametrize(
    "needle",
    ["LoadModule", "SSLEngine on", "ProxyPass        /v2", "ProxyPassReverse", "AuthName",
     "AuthType basic", "Require valid-user", "Require group pusher", "ServerName",
     "ProxyRequests", "ProxyPreserveHost", "SSLRandomSeed", "User daemon"],
)  # fmt: skip
def test_recipe_httpd_translated_lines_are_silent(needle: str) -> None:
    imported = import_config(RECIPE_HTTPD, "httpd.conf")
    lines = {n for n, text in enumerate(RECIPE_HTTPD.splitlines(), 1) if needle in text}
    assert not [n for n in imported.notes if n.line in lines]


def test_notes_are_listed_in_the_yaml_too() -> None:
    imported = import_config(RECIPE_HTTPD, "httpd.conf")
    assert imported.notes and all(isinstance(n, Problem) for n in imported.notes)
    assert [n.line for n in imported.notes] == sorted(n.line for n in imported.notes)
    for note in imported.notes:
        assert f"#   {note}\n" in imported.yaml_text
    with pytest.raises(dataclasses.FrozenInstanceError):
        imported.yaml_text = ""  # type: ignore[misc]


# ---------------------------------------------------------------- Apache variants
LIMIT = "    <Limit {methods}>\n      {require}\n    </Limit>\n"


def limits(reads: str | None, writes: str | None, writes_tag: str = "Limit") -> str:
    body = LIMIT.format(methods="GET HEAD", require=reads) if reads else ""
    if writes:
        block = LIMIT.format(methods="POST PUT DELETE PATCH", require=writes)
        body += block.replace("Limit", writes_tag)
    return body


APACHE_VARIANTS = [
    # id, access rules, extra after </Location>, expected decisions, push_group, note pattern
    ("group deployers", limits("Require valid-user", "Require group deployers"), "",
     {"anon": set(), "alice": PULL, "pat": PULL, "dev": ALL}, "deployers", None),
    ("Require user", limits("Require valid-user", "Require user alice"), "",
     {"anon": set(), "alice": ALL, "pat": PULL, "bob": PULL}, None, None),
    ("user or group",
     limits("Require valid-user", "Require user alice\n      Require group pusher"), "",
     {"alice": ALL, "pat": ALL, "bob": PULL, "anon": set()}, None, None),
    ("reads to a group", limits("Require group readers pusher", "Require group pusher"), "",
     {"alice": set(), "bob": PULL, "pat": ALL, "anon": set()}, None, None),
    ("no push restriction", "    Require valid-user\n", "",
     {"anon": set(), "alice": ALL, "pat": ALL}, None, "any valid user may push and delete"),
    ("writes not covered", limits("Require valid-user", None), "",
     {"anon": set(), "alice": ALL}, None, "push and delete need no credentials"),
    ("public pull", limits(None, "Require group pusher", "LimitExcept").replace(
        "POST PUT DELETE PATCH", "GET HEAD"), "",
     {"anon": PULL, "alice": PULL, "pat": ALL}, None, None),
    ("read-only", limits("Require valid-user", "Require all denied", "LimitExcept").replace(
        "LimitExcept POST PUT DELETE PATCH", "LimitExcept GET HEAD"), "",
     {"anon": set(), "alice": PULL, "pat": PULL}, None, None),
    ("ldap group", limits("Require valid-user", "Require ldap-group cn=ops,dc=example,dc=org"),
     "", {"alice": PULL, "pat": PULL}, None, "LDAP is not translated: it grants nobody"),
    ("RequireAll", limits("Require valid-user", "<RequireAll>\n Require group pusher\n"
                          " Require ip 10.0.0.0/8\n </RequireAll>"), "",
     {"alice": PULL, "pat": PULL}, None, "RequireAll.*granting nobody"),
    ("Deny from", limits("Require valid-user", "Require group pusher\n Deny from 10.0.0.0/8"), "",
     {"alice": PULL, "pat": PULL}, None, "address rules.*denied to everyone"),
    ("Order allow,deny alone", "    Order allow,deny\n" + RECIPE_ACCESS, "",
     {"alice": set(), "pat": set()}, None, "Order allow,deny — address rules"),
    ("Order allow,deny, Allow from all", "    Order allow,deny\n    Allow from all\n"
     + RECIPE_ACCESS, "", {"alice": PULL, "pat": ALL}, "pusher", None),
    ("sub-location", RECIPE_ACCESS,
     "  <Location /v2/private>\n    Require group secret\n  </Location>\n",
     {"anon": set(), "alice": set(), "pat": set()}, None, "acl denies everything"),
    ("delete to a user", limits("Require valid-user", "Require group pusher").replace(
        "POST PUT DELETE PATCH", "POST PUT PATCH")
     + "    <Limit DELETE>\n      Require user admin\n    </Limit>\n", "",
     {"alice": PULL, "pat": {"pull", "push"}, "admin": {"pull", "delete"}}, None,
     r"both groups \['pusher'\] and users \['admin'\] gets only \['pull', 'push'\]"),
    ("GET and HEAD differ", "    <Limit HEAD>\n      Require valid-user\n    </Limit>\n"
     "    <LimitExcept HEAD>\n      Require group pusher\n    </LimitExcept>\n", "",
     {"alice": set(), "pat": ALL}, None, "GET/HEAD are not treated alike"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("access", "extra", "expected", "push_group", "note"),
    [pytest.param(*v[1:], id=v[0]) for v in APACHE_VARIANTS],
)
def test_apache_variants(
    tmp_path: Path,
    access: str,
    extra: str,
    expected: dict[str, set[str]],
    push_group: str | None,
    note: str | None,
) -> None:
    imported = import_config(httpd_with(access, extra), "httpd.conf")
    config = written(tmp_path, imported)
    assert {who: allowed(config, WHO[who]) for who in expected} == expected
    if push_group is not None:
        assert config.acl is None and config.push_group == push_group
    else:
        assert config.acl is not None and "acl:\n" in imported.yaml_text
    if note is not None:
        assert notes_matching(imported, note), imported.notes


def test_a_user_in_two_incomparable_rules_gets_the_first_only(tmp_path: Path) -> None:
    """Conservative: regproxy's first match gives fewer rights than Apache, never more."""
    variant = next(v for v in APACHE_VARIANTS if v[0] == "delete to a user")
    config = written(tmp_path, import_config(httpd_with(variant[1]), "httpd.conf"))
    assert allowed(config, ADMIN_PUSHER) == {"pull", "push"}


def test_no_push_restriction_is_one_rule_for_every_valid_user(tmp_path: Path) -> None:
    imported = import_config(httpd_with("    Require valid-user\n"), "httpd.conf")
    assert 'acl:\n  - actions: "*"\n' in imported.yaml_text
    assert written(tmp_path, imported).acl is not None


def test_second_virtual_host_and_other_locations_are_notes(tmp_path: Path) -> None:
    extra = "  <Location /metrics>\n    SetHandler server-status\n  </Location>\n"
    text = httpd_with(RECIPE_ACCESS, extra) + "<VirtualHost *:80>\n  ServerName x\n</VirtualHost>\n"
    imported = import_config(text, "httpd.conf")
    assert notes_matching(imported, r"<Location /metrics> — regproxy serves only /v2")
    assert notes_matching(imported, r"<VirtualHost \*:80> — only the first <VirtualHost>")
    assert written(tmp_path, imported).acl is None  # no access rules there: policy kept


# ---------------------------------------------------------------- Apache syntax
def test_apache_continuations_quotes_and_case(tmp_path: Path) -> None:
    text = (
        "# a comment \\\n"
        "LISTEN 127.0.0.1:5043\n"
        "proxypass /v2 \\\n"
        "    http://registry:5000/v2\n"
        "authname 'Team \\'A\\' registry'\n"
        'AuthUserFile "/srv/auth dir/users #1"\n'
        "<location /v2>\n"
        "  <LIMITEXCEPT get>\n"
        "    require group pusher\n"
        "  </limitexcept>\n"
        "  <limit get>\n"
        "    REQUIRE valid-user\n"
        "  </LIMIT>\n"
        "</LOCATION>\n"
        "Bogus directive\n"
    )
    imported = import_config(text, "h.conf")
    config = written(tmp_path, imported)
    assert config.listen == Listen("127.0.0.1", 5043)
    assert config.upstream == "http://registry:5000"
    assert config.realm == "Team 'A' registry"
    assert config.htpasswd == Path("/srv/auth dir/users #1")
    assert (allowed(config, ALICE), allowed(config, PAT)) == (PULL, ALL)
    assert [str(n) for n in notes_matching(imported, "Bogus")] == [
        "h.conf:15: Bogus directive — not translated: regproxy has no equivalent"
    ]


@pytest.mark.parametrize(
    ("directive", "why"),
    [
        ("ProxyPass /v2 http://registry:5000", "path rewrite /v2 -> /"),
        ("ProxyPass /v2 balancer://cluster/v2", "not an http\\(s\\)://host\\[:port\\] upstream"),
        ("ProxyPass /v2 http://registry:5000/v2 retry=0", "connection parameters"),
        ("ProxyPass /app http://app:8080/", "proxies only /v2"),
        ("Listen 5043 https", "every interface"),
        ("Listen [::]:99999", "not an address regproxy can listen on"),
        ("AuthName 'say \"hi\"'", "realm .* without quotes"),
        ("AuthType digest", "Basic authentication only"),
        ("AuthBasicProvider ldap", "one htpasswd file only"),
        ("AuthLDAPURL ldap://ldap.example.org/dc=example", "LDAP directives are not translated"),
        ("SSLCertificateChainFile /etc/chain.pem", "append the chain"),
        ("Header set X-Frame-Options DENY", "does not add or change other headers"),
        ("Satisfy any", "regproxy always requires what its rules say"),
        ("AuthUserFile conf/httpd.htpasswd", "relative path kept"),
    ],
)
def test_apache_directive_notes(tmp_path: Path, directive: str, why: str) -> None:
    replaced = (
        "Listen 5043\n" if directive.startswith("Listen") else "  ServerName myregistrydomain.com\n"
    )
    text = RECIPE_HTTPD.replace(replaced, f"  {directive}\n")
    imported = import_config(text, "httpd.conf")
    line = line_of(text, directive)
    assert [n for n in imported.notes if n.line == line and re.search(why, n.message)]
    written(tmp_path, imported)  # still loadable


def test_unsafe_values_are_quoted_in_the_yaml(tmp_path: Path) -> None:
    text = httpd_with(limits("Require valid-user", "Require user null 'a b' '*'"))
    text = text.replace('"/usr/local/apache2/conf/httpd.groups"', '"/etc/groups: yes # [x], {y}"')
    imported = import_config(text, "httpd.conf")
    config = written(tmp_path, imported)
    assert config.groups == Path("/etc/groups: yes # [x], {y}")
    assert allowed(config, Identity("null")) == ALL
    assert allowed(config, Identity("a b")) == PULL  # cannot be a regproxy user: left out
    assert notes_matching(imported, "names with spaces or ':' cannot be regproxy users")
    assert allowed(config, Identity("*")) == ALL and allowed(config, ALICE) == PULL


# ---------------------------------------------------------------- the nginx recipe
def test_recipe_nginx(tmp_path: Path) -> None:
    imported = import_config(RECIPE_NGINX, "auth/nginx.conf")
    assert imported.yaml_text.startswith("# Imported from auth/nginx.conf")
    config = written(tmp_path, imported)
    assert config.listen == Listen("0.0.0.0", 443)
    assert config.upstream == "http://registry:5000"  # from `upstream docker-registry`
    assert config.htpasswd == Path("/etc/nginx/conf.d/nginx.htpasswd")
    assert config.tls_cert == Path("/etc/nginx/conf.d/domain.crt")
    assert config.tls_key == Path("/etc/nginx/conf.d/domain.key")
    assert config.realm == "Registry realm"
    assert 'acl:\n  - actions: "*"\n' in imported.yaml_text
    assert {who: allowed(config, WHO[who]) for who in ("anon", "alice", "pat")} == {
        "anon": set(),
        "alice": ALL,
        "pat": ALL,
    }


@pytest.mark.parametrize(
    ("needle", "why"),
    [
        ("map $upstream_http", "variables are not translated"),
        ("listen 443 ssl", r"0\.0\.0\.0:443 .*127\.0\.0\.1:443"),
        ("ssl_protocols", "own fixed TLS"),
        ("ssl_ciphers", "own fixed TLS"),
        ("ssl_prefer_server_ciphers", "own fixed TLS"),
        ("ssl_session_cache", "own fixed TLS"),
        ("if ($http_user_agent", "User-Agent"),
        ("add_header", "Docker-Distribution-Api-Version itself"),
        ("proxy_set_header  Host", "keeps the client's Host"),
        ("X-Real-IP", "not X-Real-IP"),
        ("proxy_set_header  X-Forwarded-For", "sets X-Forwarded-For itself"),
        ("X-Forwarded-Proto", "X-Forwarded-Proto: https itself"),
        ("proxy_read_timeout", "timeouts.read"),
        ("auth_basic_user_file", "inside the nginx container"),
        ('auth_basic "Registry realm"', "any valid user may push and delete"),
    ],
)
def test_recipe_nginx_notes(needle: str, why: str) -> None:
    imported = import_config(RECIPE_NGINX, "nginx.conf")
    line = line_of(RECIPE_NGINX, needle)
    assert [n for n in imported.notes if n.line == line and re.search(why, str(n))], [
        str(n) for n in imported.notes
    ]


@pytest.mark.parametrize(
    "needle",
    ["worker_connections", "server_name", "client_max_body_size 0", "chunked_transfer_encoding",
     "proxy_pass", "upstream docker-registry", "server registry:5000", "return 404"],
)  # fmt: skip
def test_recipe_nginx_translated_lines_are_silent(needle: str) -> None:
    imported = import_config(RECIPE_NGINX, "nginx.conf")
    assert not [n for n in imported.notes if n.line == line_of(RECIPE_NGINX, needle)]


NGINX_VARIANTS = [
    ("limit_except deny all", NGINX_AUTH + "      limit_except GET HEAD { deny all; }\n",
     {"anon": set(), "alice": PULL}, None),
    ("limit_except same file", NGINX_AUTH + "      limit_except GET HEAD {\n" + NGINX_AUTH
     + "      }\n", {"anon": set(), "alice": ALL}, "any valid user may push"),
    ("limit_except other file", NGINX_AUTH + "      limit_except GET HEAD {\n"
     "        auth_basic \"Push\";\n        auth_basic_user_file /etc/nginx/pushers;\n      }\n",
     {"anon": set(), "alice": PULL}, "a second user file"),
    ("public pull", "      auth_basic off;\n      limit_except GET {\n" + NGINX_AUTH + "      }\n",
     {"anon": PULL, "alice": ALL}, None),
    ("push from a network", NGINX_AUTH + "      limit_except GET HEAD {\n"
     "        allow 10.0.0.0/8;\n        deny all;\n      }\n",
     {"anon": set(), "alice": PULL}, "address rules.*deny all"),
    ("auth_request", "      auth_request /auth;\n", {"anon": set(), "alice": set()},
     "acl denies all"),
    ("no auth at all", "", {"anon": PULL, "alice": ALL}, "push and delete need no credentials"),
    ("deny all", NGINX_AUTH + "      deny all;\n", {"anon": set(), "alice": set()}, None),
    ("nested location", NGINX_AUTH + "      location /v2/private/ { deny all; }\n",
     {"alice": set()}, "acl denies"),
    ("satisfy any", NGINX_AUTH + "      satisfy any;\n      allow 10.0.0.0/8;\n      deny all;\n",
     {"anon": set(), "alice": set()}, "satisfy any — not translated"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("location", "expected", "note"), [pytest.param(*v[1:], id=v[0]) for v in NGINX_VARIANTS]
)
def test_nginx_variants(
    tmp_path: Path, location: str, expected: dict[str, set[str]], note: str | None
) -> None:
    imported = import_config(nginx_with(location), "nginx.conf")
    config = written(tmp_path, imported)
    assert {who: allowed(config, WHO[who]) for who in expected} == expected
    if note is not None:
        assert notes_matching(imported, note), imported.notes


def test_nginx_server_block_alone(tmp_path: Path) -> None:
    text = """
    # conf.d/registry.conf
    include /etc/nginx/snippets/*.conf;
    server {
        listen 127.0.0.1:5043 ssl;   # loopback only
        ssl_certificate     "certs/server.crt";
        ssl_certificate_key certs/server.key;
        location ^~ /v2/ {
            auth_basic "Registry; {realm}";
            auth_basic_user_file ${HTPASSWD_DIR}/htpasswd;
            limit_except GET HEAD { deny all; }
            proxy_pass http://127.0.0.1:5000/v2/;
        }
        location / { return 404; }
    }
    """
    imported = import_config(text, "registry.conf")
    config = written(tmp_path, imported)
    assert config.listen == Listen("127.0.0.1", 5043)
    assert not notes_matching(imported, "every interface")
    assert config.upstream == "http://127.0.0.1:5000"
    assert config.realm == "Registry; {realm}"
    assert config.htpasswd == tmp_path / "${HTPASSWD_DIR}/htpasswd"
    assert notes_matching(imported, r"registry\.conf:10: .* does not expand variables")
    assert config.tls_cert == tmp_path / "certs/server.crt"  # relative: to the YAML file
    assert notes_matching(imported, r"registry\.conf:3: include .* — not followed")
    assert notes_matching(imported, r"registry\.conf:6: ssl_certificate .*relative path kept")
    assert notes_matching(imported, r"registry\.conf:14: location / — regproxy serves only /v2")
    assert (allowed(config, ALICE), allowed(config, ANON)) == (PULL, set())


def test_nginx_several_servers_and_upstream_servers(tmp_path: Path) -> None:
    text = """http {
      upstream reg { server 10.0.0.5:5000 max_fails=3; server 10.0.0.6:5000; }
      server { listen 80; return 301 https://$host$request_uri; }
      server {
        listen [::]:443 ssl http2;
        location /v2 { proxy_pass https://reg; auth_basic R; auth_basic_user_file /f; }
      }
    }"""
    imported = import_config(text, "n.conf")
    config = written(tmp_path, imported)
    assert (config.listen, config.upstream) == (Listen("::", 443), "https://10.0.0.5:5000")
    assert notes_matching(imported, r"n\.conf:2: server 10\.0\.0\.6:5000 — regproxy has one")
    assert notes_matching(imported, r"n\.conf:3: server — only one server block")
    assert notes_matching(imported, r"n\.conf:5: listen .*HTTP/1\.1 over TLS: other flags")
    assert notes_matching(imported, "no certificate or key found")


@pytest.mark.parametrize(
    ("text", "listen", "unused"),
    [
        (RECIPE_HTTPD.replace("Listen 5043", "Listen 80\nListen 5043"), "0.0.0.0:5043",
         "Listen 80"),
        (RECIPE_HTTPD.replace("Listen 5043", "Listen 127.0.0.1:5043\nListen [::1]:5043"),
         "127.0.0.1:5043", "Listen [::1]:5043"),
        (RECIPE_NGINX.replace("listen 443 ssl;", "listen 80;\n    listen 443 ssl;"), "0.0.0.0:443",
         "listen 80"),
        (RECIPE_NGINX.replace("listen 443 ssl;", "listen 8080;"), "0.0.0.0:8080", None),
    ],
)  # fmt: skip
def test_the_listen_serving_the_registry_is_kept(
    tmp_path: Path, text: str, listen: str, unused: str | None
) -> None:
    imported = import_config(text, "x.conf")
    assert str(written(tmp_path, imported).listen) == listen
    if unused is not None:
        line = line_of(text, unused)
        assert [n for n in imported.notes if n.line == line and "one address" in n.message]
    else:
        assert notes_matching(imported, "plain HTTP in nginx: regproxy always serves TLS")


# ---------------------------------------------------------------- malformed input
MALFORMED = [
    ("", "x.conf", r"^x\.conf: empty"),
    ("  \n# only a comment\n\n", "x.conf", r"^x\.conf: empty"),
    ("Listen 5043\n\x00\x01\x02binary", "x.conf", r"^x\.conf:2: binary"),
    ("\ufffd\ufffdPNG", "x.conf", r"^x\.conf:1: binary"),
    ("hello world\nthis is prose\n", "x.conf", r"^x\.conf: neither an Apache"),
    ("Listen 5043\n<VirtualHost *:5043>\n  ServerName x\n", "h.conf",
     r"^h\.conf:2: <VirtualHost> is never closed"),
    ("Listen 5043\n</Location>\n", "h.conf", r"^h\.conf:2: </Location> without an opening"),
    ("Listen 5043\n<Location /v2>\n</Limit>\n", "h.conf",
     r"^h\.conf:3: </Limit> closes <Location> of line 2"),
    ("Listen 5043\n<Location /v2\n", "h.conf", r"^h\.conf:2: .*without its closing '>'"),
    ("Listen 5043\n<Limit GET>\n<Limit POST>\nRequire valid-user\n</Limit>\n</Limit>\n",
     "h.conf", r"^h\.conf:3: <Limit POST>: nested"),
    ('Listen 5043\nAuthName "Registry\n', "h.conf", r"^h\.conf:2: unterminated quoted string"),
    ("server {\n  listen 443 ssl;\n  location /v2/ {\n    proxy_pass http://r:5000;\n}\n",
     "n.conf", r"^n\.conf:1: 'server \{' is never closed"),
    ("server {\n  listen 443 ssl;\n}\n}\n", "n.conf", r"^n\.conf:4: unexpected '\}'"),
    ("server {\n  listen 443 ssl\n}\n", "n.conf", r"^n\.conf:2: listen is missing its ';'"),
    ("server {\n  listen 443 ssl;\n  server_name x", "n.conf",
     r"^n\.conf:3: unexpected end of file"),
    ("server {\n  listen 443 ssl;\n  auth_basic \"oops;\n}\n", "n.conf",
     r"^n\.conf:3: unterminated"),
    ("server {\n  listen 443;\n  ;\n}\n", "n.conf", r"^n\.conf:3: unexpected ';'"),
    ("upstream r { server r:5000; }\nevents { }\n", "n.conf", r"^n\.conf: no server block"),
    ("http {\n" * 60 + "}\n" * 60, "n.conf", r"^n\.conf:5\d: blocks nested too deeply"),
    ("Listen 1\n" + "<IfModule x>\n" * 60 + "</IfModule>\n" * 60, "h.conf", r"nested too deeply"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "source", "match"), MALFORMED)
def test_malformed_input_is_a_value_error_with_file_and_line(
    text: str, source: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        import_config(text, source)


# ---------------------------------------------------------------- never a traceback
LINES = [*RECIPE_HTTPD.splitlines(), *RECIPE_NGINX.splitlines(), "{", "}", ";", '"', "'", "\\",
         "<Limit GET>", "</Limit>", "<Location /v2/x>", "</Location>", "limit_except GET {",
         "Require user a:b", "deny 10.0.0.1;", "auth_request /x;", "server {",
         "location / {"]  # fmt: skip


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(LINES) | st.text(max_size=20), max_size=40))
def test_any_input_gives_loadable_yaml_or_a_value_error(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    try:
        imported = import_config("\n".join(lines), "fuzz.conf")
    except ValueError as exc:
        assert str(exc).startswith("fuzz.conf")
        return
    assert imported.yaml_text.startswith("# Imported from fuzz.conf")
    yaml.safe_load(imported.yaml_text)
    written(tmp_path_factory.mktemp("fuzz"), imported)
