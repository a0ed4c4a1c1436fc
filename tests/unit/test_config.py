"""node.config.load: flag > environment > config file > default; bad values raise ConfigError."""

from __future__ import annotations

import pytest

from merpati.node.config import FLAGS, Config, ConfigError, load


def no_flags(**given) -> dict:
    flags = {name: None for name in FLAGS}
    flags.update(given)
    return flags


@pytest.fixture
def toml(tmp_path):
    def write(text: str) -> str:
        p = tmp_path / "merpati.toml"
        p.write_text(text)
        return str(p)

    return write


def test_defaults():
    cfg = load(no_flags(), environ={})
    assert cfg == Config()
    assert cfg.amqp_port == 5672 and cfg.frame_max == 131072 and cfg.users == []


def test_load_does_not_read_os_environ_when_given_an_environment(monkeypatch):
    monkeypatch.setenv("MERPATI_AMQP_PORT", "1111")
    assert load(no_flags(), environ={}).amqp_port == 5672
    assert load(no_flags()).amqp_port == 1111


def test_precedence_flag_over_env_over_file(toml):
    path = toml('amqp-port = 1001\nheartbeat = 11\nlog_level = "debug"\nframe_max = 8192\n')
    env = {"MERPATI_AMQP_PORT": "2002", "MERPATI_HEARTBEAT": "22"}
    cfg = load(no_flags(config=path, amqp_port="3003"), environ=env)
    assert cfg.amqp_port == 3003  # flag
    assert cfg.heartbeat == 22  # env over file
    assert cfg.log_level == "debug"  # file over default
    assert cfg.frame_max == 8192
    assert cfg.channel_max == 2047  # default
    assert cfg.config == path


def test_config_file_from_the_environment(toml):
    path = toml("amqp_port = 4004\n")
    cfg = load(no_flags(), environ={"MERPATI_CONFIG": path})
    assert cfg.amqp_port == 4004
    assert cfg.config == path


def test_config_flag_beats_config_env(toml, tmp_path):
    path = toml("amqp_port = 4004\n")
    other = tmp_path / "other.toml"
    other.write_text("amqp_port = 5005\n")
    cfg = load(no_flags(config=path), environ={"MERPATI_CONFIG": str(other)})
    assert cfg.amqp_port == 4004


def test_types_are_coerced():
    env = {
        "MERPATI_MEMORY_HIGH_WATERMARK": "0.6",
        "MERPATI_LOOPBACK_USERS": "guest, admin ,",
        "MERPATI_VHOSTS": "/,dev",
    }
    cfg = load(no_flags(frame_max="65536", heartbeat="0"), environ=env)
    assert cfg.memory_high_watermark == 0.6
    assert cfg.loopback_users == ("guest", "admin")
    assert cfg.vhosts == ("/", "dev")
    assert cfg.frame_max == 65536 and cfg.heartbeat == 0


def test_users_in_the_file(toml):
    path = toml(
        '[[users]]\nname = "alice"\npassword = "pw"\ntags = ["administrator"]\n'
        '[[users]]\nname = "bob"\npassword = "pw2"\nvhosts = ["/", "dev"]\n'
    )
    cfg = load(no_flags(config=path), environ={})
    assert [(u.name, u.password, u.tags, u.vhosts) for u in cfg.users] == [
        ("alice", "pw", ("administrator",), ("/",)),
        ("bob", "pw2", (), ("/", "dev")),
    ]


@pytest.mark.parametrize(
    "flags, env",
    [
        ({"amqp_port": "abc"}, {}),
        ({}, {"MERPATI_AMQP_PORT": "12.5"}),
        ({"amqp_port": "0"}, {}),
        ({"amqp_port": "65536"}, {}),
        ({}, {"MERPATI_FRAME_MAX": "4095"}),
        ({"frame_max": "lots"}, {}),
        ({"log_level": "loud"}, {}),
        ({}, {"MERPATI_MEMORY_HIGH_WATERMARK": "high"}),
        ({"heartbeat": ""}, {}),
    ],
)
def test_bad_flag_and_env_values(flags, env):
    with pytest.raises(ConfigError):
        load(no_flags(**flags), environ=env)


def test_error_names_the_setting():
    with pytest.raises(ConfigError, match="amqp-port"):
        load(no_flags(amqp_port="abc"), environ={})


@pytest.mark.parametrize(
    "text",
    [
        "amqp_port = [",  # not TOML
        "no_such_setting = 1",
        'amqp-port = "abc"',
        "frame_max = 100",
        'log-level = "verbose"',
        '[[users]]\nname = "x"\n',  # no password
        '[[users]]\npassword = "x"\n',  # no name
        'memory_high_watermark = "much"',
    ],
)
def test_bad_config_files(toml, text):
    with pytest.raises(ConfigError):
        load(no_flags(config=toml(text)), environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(no_flags(config=str(tmp_path / "missing.toml")), environ={})


def test_wrongly_typed_string_setting_in_file_is_a_config_error(toml):
    # log-level must be a string; a number must be reported as a ConfigError, not crash load().
    with pytest.raises(ConfigError):
        load(no_flags(config=toml("log-level = 3\n")), environ={})


def test_user_tags_given_as_one_string_are_not_split_into_characters(toml):
    path = toml('[[users]]\nname = "alice"\npassword = "pw"\ntags = "administrator"\n')
    try:
        cfg = load(no_flags(config=path), environ={})
    except ConfigError:
        return  # rejecting it is fine too
    assert cfg.users[0].tags == ("administrator",)


def test_bind_takes_several_addresses_and_defaults_to_both_families() -> None:
    assert Config().bind_addresses() == ["0.0.0.0", "::"]
    assert Config(bind=" 127.0.0.1, ::1 ,127.0.0.1").bind_addresses() == ["127.0.0.1", "::1"]


def test_a_bind_address_that_is_neither_an_address_nor_a_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="bind"):
        load(no_flags(bind="127.0.0.1,[::1]"), environ={})


def test_default_queue_type_is_classic_or_quorum():
    assert load(no_flags(), environ={}).default_queue_type == "classic"
    cfg = load(no_flags(), environ={"MERPATI_DEFAULT_QUEUE_TYPE": "quorum"})
    assert cfg.default_queue_type == "quorum"
    with pytest.raises(ConfigError, match="default-queue-type must be classic or quorum"):
        load(no_flags(default_queue_type="stream"), environ={})


@pytest.mark.parametrize(
    "given, error",
    [
        ({"amqp_port": "0"}, "plain listener off: set tls-cert"),
        ({"tls_cert": "c.pem", "amqps_port": "0"}, "amqps-port is 0"),
        ({"tls_cert": "c.pem", "tls_verify": "always"}, "tls-verify must be peer or none"),
        ({"tls_cert": "c.pem", "tls_fail_if_no_peer_cert": "true"}, "needs tls-verify peer"),
        ({"tls_cert": "c.pem", "tls_verify": "peer"}, "tls-verify peer needs tls-ca"),
        ({"tls_ca": "ca.pem"}, "need tls-cert"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(given, error):
    with pytest.raises(ConfigError, match=error):
        load(no_flags(**given), environ={})


def test_amqps_only():
    cfg = load(no_flags(amqp_port="0", tls_cert="c.pem"), environ={})
    assert cfg.amqp_port == 0 and cfg.amqps_port == 5671 and cfg.tls_verify == "none"


def test_max_connections(toml):
    assert load(no_flags(), environ={}).max_connections == 0  # no limit
    assert load(no_flags(max_connections="100"), environ={}).max_connections == 100
    assert load(no_flags(), environ={"MERPATI_MAX_CONNECTIONS": "7"}).max_connections == 7
    assert load(no_flags(config=toml("max-connections = 3\n")), environ={}).max_connections == 3
    with pytest.raises(ConfigError, match="max-connections"):
        load(no_flags(max_connections="-1"), environ={})


def test_consumer_timeout_from_flag_env_and_file(toml):
    assert load(no_flags(), environ={}).consumer_timeout == 1_800_000  # RabbitMQ's 30 min
    assert load(no_flags(config=toml("consumer-timeout = 0\n")), environ={}).consumer_timeout == 0
    env = {"MERPATI_CONSUMER_TIMEOUT": "60000"}
    assert load(no_flags(), environ=env).consumer_timeout == 60_000
    assert load(no_flags(consumer_timeout="500"), environ=env).consumer_timeout == 500
    with pytest.raises(ConfigError, match="consumer-timeout must be 0"):
        load(no_flags(consumer_timeout="-1"), environ={})
    with pytest.raises(ConfigError, match="consumer-timeout"):
        load(no_flags(consumer_timeout="30m"), environ={})
