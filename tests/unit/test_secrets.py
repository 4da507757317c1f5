"""timeguard.secrets (issue 9, items 7 and 8): one redaction rule for whatever is shown or stored, and secrets
that exist only inside the service deferred while validating elsewhere."""

from __future__ import annotations

import urllib.parse

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from timeguard import config, secrets
from timeguard.hooks.registry import HOOK_TYPES
from timeguard.secrets import MASK, redact, redact_text, redact_url

# A secret worth finding: "ZQ" (which nothing else generated here contains) and then anything.
SECRETS = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="@/?#&=%:[]\\"),
                  min_size=6, max_size=30).map(lambda text: "ZQ" + text)
HOSTS = st.sampled_from(["db.example.net", "127.0.0.1", "[::1]", "beat-db"])
SCHEMES = st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "mariadb+pymysql", "https", "redis"])
PLAIN = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
SECRET_PARAMS = st.sampled_from(["password", "PASSWORD", "pass", "pwd", "token", "access_token", "api_key",
                                 "apikey", "secret", "client_secret", "sig", "key", "auth"])
PLAIN_PARAMS = st.sampled_from(["sslmode", "connect_timeout", "charset", "application_name", "format"])


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@settings(max_examples=300)
@given(st.fixed_dictionaries({
    "scheme": SCHEMES, "user": PLAIN, "password": SECRETS, "host": HOSTS, "port": st.none() | st.integers(1, 65535),
    "path": PLAIN, "secret_param": SECRET_PARAMS, "param_secret": SECRETS, "plain_param": PLAIN_PARAMS,
    "plain_value": PLAIN}))
def test_a_url_keeps_everything_but_its_secrets(parts):
    names = ("scheme", "user", "password", "host", "port", "path", "secret_param", "param_secret", "plain_param",
             "plain_value")
    scheme, user, password, host, port, path, secret_param, param_secret, plain_param, plain_value = (
        parts[n] for n in names)
    netloc = f"{user}:{quoted(password)}@{host}" + (f":{port}" if port else "")
    query = f"{plain_param}={plain_value}&{secret_param}={quoted(param_secret)}"
    url = f"{scheme}://{netloc}/{path}?{query}"
    shown = redact_url(url)
    for secret in (password, quoted(password), param_secret, quoted(param_secret)):
        assert secret not in shown
    assert shown == (f"{scheme}://{user}:{MASK}@{host}" + (f":{port}" if port else "")
                     + f"/{path}?{plain_param}={plain_value}&{secret_param}={MASK}")
    assert redact_url(shown) == shown  # idempotent, and stable: a stored identity (a fingerprint) may use it
    assert redact_text(f"cannot connect to {url}: refused") == f"cannot connect to {shown}: refused"


@given(url=st.sampled_from(["sqlite:////var/lib/app/db.sqlite3", "sqlite:///relative.db", "sqlite://",
                            "postgresql://beat@db/beat", "https://alerts.example.net/hook?team=infra",
                            "mysql://root@127.0.0.1:3306/test", "not a url", "/etc/timeguard/secret"]))
def test_what_holds_no_secret_is_unchanged(url):
    assert redact_url(url) == url and redact_text(url) == url


@given(path=st.lists(PLAIN, min_size=1, max_size=4), query=st.booleans())
def test_a_slack_webhook_url_is_a_secret_as_a_whole(path, query):
    url = "https://hooks.slack.com/services/" + "/".join(path) + ("?x=1" if query else "")
    assert redact_url(url) == "https://hooks.slack.com/***" + ("?***" if query else "")
    assert redact({"webhook_url": "https://chat.example/hook/" + "/".join(path)}) == {
        "webhook_url": "https://chat.example/***"}  # Slack's option: whatever host it names


@given(name=st.sampled_from(["password", "db_password", "DB_PASSWORD", "secret", "api-key", "ApiKey",
                             "Authorization", "X-Auth-Token", "token", "client_secret", "private_key",
                             "passphrase", "Cookie", "sentry_dsn"]),
       value=SECRETS | st.integers(), depth=st.integers(0, 4))
def test_a_value_under_a_secret_name_is_masked_at_any_depth(name, value, depth):
    data: object = {name: value, "port": 5432, "secret_file": "/run/credentials/x", "token_env": "TOKEN",
                    "headers": {name: {"env": "VAR"}}}
    for i in range(depth):
        data = {f"level{i}": [data]}
    shown = redact(data)
    inner = shown
    for i in reversed(range(depth)):
        inner = inner[f"level{i}"][0]
    assert inner == {name: MASK, "port": 5432, "secret_file": "/run/credentials/x", "token_env": "TOKEN",
                     "headers": {name: {"env": "VAR"}}}  # where a secret is (a path, a variable) stays shown


@pytest.mark.parametrize("name", ["host", "port", "state_dir", "timeout_s", "max_root_distance_s", "on",
                                  "allow_plain_http", "ca_bundle", "webhook_url_file", "secret_env", "format"])
def test_ordinary_keys_are_not_secrets(name):
    assert not secrets.is_secret_name(name)


def test_the_effective_default_configuration_has_nothing_to_mask():
    data = config.to_dict(config.load(None))
    assert redact(data) == data


@pytest.mark.parametrize(("text", "shown"), [
    ("host=db user=beat password=hunter2 dbname=beat", "host=db user=beat password=*** dbname=beat"),
    ("DB_PASSWORD=hunter2 ./migrate", "DB_PASSWORD=*** ./migrate"),
    ("cannot read /run/credentials/timeguard.service/webhook-secret: No such file",
     "cannot read /run/credentials/timeguard.service/webhook-secret: No such file"),
])
def test_assignments_in_free_text(text, shown):
    assert redact_text(text) == shown


# ------------------------------------------------------------------------------------------------ deferral


def hook_yaml(hook: dict) -> str:
    return yaml.safe_dump({"sources": {"ntp": [{"host": "127.0.0.1"}, {"host": "127.0.0.2"}], "http": []},
                           "hooks": [hook]})


UNREADABLE = [  # every way a hook names a secret, each unreadable outside the service
    ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret_file": "/nonexistent/cred/webhook"},
     "hooks[0].secret_file", "cannot read /nonexistent/cred/webhook"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret_file": "webhook-secret"},
     "hooks[0].secret_file", "$CREDENTIALS_DIRECTORY"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/",
      "secret_file": "$CREDENTIALS_DIRECTORY/webhook-secret"}, "hooks[0].secret_file", "not set"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret_env": "TG_TEST_UNSET"},
     "hooks[0].secret_env", "TG_TEST_UNSET is not set"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/", "headers": {"Authorization": {"env": "TG_UNSET"}}},
     "hooks[0].headers.Authorization", "TG_UNSET is not set"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/", "headers": {"X-Token": {"file": "/nonexistent/t"}}},
     "hooks[0].headers.X-Token", "cannot read /nonexistent/t"),
    ({"type": "slack", "name": "h", "webhook_url_env": "TG_TEST_UNSET"}, "hooks[0].webhook_url_env", "is not set"),
    ({"type": "slack", "name": "h", "webhook_url_file": "/nonexistent/slack"}, "hooks[0].webhook_url_file",
     "cannot read"),
    ({"type": "command", "name": "h", "command": ["/bin/true"], "env": {"DB_PASSWORD": {"file": "/nonexistent/p"}}},
     "hooks[0].env.DB_PASSWORD", "cannot read /nonexistent/p"),
]


@pytest.mark.parametrize(("hook", "path", "why"), UNREADABLE)
def test_a_secret_only_the_service_can_read_is_a_warning_outside_it(monkeypatch, hook, path, why):
    for var in ("TG_TEST_UNSET", "TG_UNSET", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    text = hook_yaml(hook)
    cfg = config.loads(text, "t.yaml", resolve_secrets=False, hook_types=HOOK_TYPES)
    (warning,) = cfg.warnings
    assert warning.path == path and why in warning.message and "not readable here" in warning.message
    assert warning.line == config._parse(text, "t.yaml")[1][path]
    assert [h.name for h in cfg.hooks] == ["h"]
    with pytest.raises(config.ConfigError) as info:  # the daemon, which uses it, still needs it
        config.loads(text, "t.yaml", hook_types=HOOK_TYPES)
    assert [p.path for p in info.value.problems] == [path]


def test_a_secret_that_is_read_and_wrong_is_still_an_error(monkeypatch, tmp_path):
    (tmp_path / "bad").write_text("not-a-whsec\n")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("TG_EMPTY", " ")
    for hook, fragment in [
        ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret_file": str(tmp_path / "bad")},
         "Standard Webhooks secret"),
        ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret_file": str(tmp_path / "empty")},
         "is empty"),
        ({"type": "slack", "name": "h", "webhook_url_env": "TG_EMPTY"}, "is empty"),
        ({"type": "webhook", "name": "h", "url": "https://a.example/", "secret": "whsec_inline"}, "inline secrets"),
    ]:
        with pytest.raises(config.ConfigError, match=fragment):
            config.loads(hook_yaml(hook), "t.yaml", resolve_secrets=False, hook_types=HOOK_TYPES)


def test_deferral_ends_with_the_load():
    config.loads(hook_yaml(UNREADABLE[0][0]), "t.yaml", resolve_secrets=False, hook_types=HOOK_TYPES)
    assert secrets.defer("k", "why") is False  # outside a deferring block a missing secret is an error again


# ------------------------------------------------------------------------------------------- inline secrets


INLINE = [
    ({"type": "slack", "name": "h", "webhook_url": "https://hooks.slack.com/services/T0/B0/XXXXSECRET"},
     "hooks[0].webhook_url", "webhook_url_file", "XXXXSECRET"),
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql://beat:hunter2@db/beat"},
     "hooks[0].database_url", "database_url_file", "hunter2"),
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql://beat@db/beat?password=hunter2"},
     "hooks[0].database_url", "database_url_env", "hunter2"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/x", "headers": {"Authorization": "Bearer hunter2"}},
     "hooks[0].headers.Authorization", "{file: PATH}", "hunter2"),
    ({"type": "webhook", "name": "h", "url": "https://a.example/x?token=hunter2"}, "hooks[0].url", "header",
     "hunter2"),
    ({"type": "command", "name": "h", "command": ["/bin/true"], "env": {"DB_PASSWORD": "hunter2"}},
     "hooks[0].env.DB_PASSWORD", "{env: VAR}", "hunter2"),
]


@pytest.mark.parametrize(("hook", "path", "way_out", "secret"), INLINE)
def test_an_inline_secret_is_warned_with_the_way_out(hook, path, way_out, secret):
    cfg = config.loads(hook_yaml(hook), "t.yaml", hook_types=HOOK_TYPES)
    (warning,) = cfg.warnings
    assert warning.path == path and "inline" in warning.message and way_out in warning.message
    assert secret not in warning.format("t.yaml")
    assert secret not in yaml.safe_dump(redact(config.to_dict(cfg)))


@pytest.mark.parametrize("secret", ["ZQ00000.", "pw!", "why?", "a.b..", "x"])
@pytest.mark.parametrize("after", ["", ".", ": refused", ".: refused", "!", ", then"])
def test_a_secret_at_the_end_of_a_url_keeps_no_character_before_the_sentence_goes_on(secret, after):
    """The sentence's punctuation after a URL is kept, but never at the price of showing the secret's last
    characters ('.', '!', '?' are legal unencoded in a value)."""
    masked = "cannot connect to postgresql://u@h/db?password=***"
    shown = redact_text(f"cannot connect to postgresql://u@h/db?password={secret}{after}")
    assert shown.startswith(masked) and secret not in shown
    assert shown.removeprefix(masked) == after.lstrip(".!?")  # what follows is the sentence's, never the secret's
