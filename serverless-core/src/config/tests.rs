use super::*;
use crate::Scale;

fn invalid(text: &str) -> (String, String, String) {
    match Config::from_toml(text) {
        Err(ConfigError::Invalid {
            field,
            value,
            expected,
        }) => (field, value, expected),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

const APP: &str = "[[apps]]\nname = \"hello\"\nimage = \"oci-archive:./hello.tar\"\n";

#[test]
fn full_example_parses() {
    let config = Config::from_toml(
        r#"
        listen = "127.0.0.1:8080"
        admin  = "127.0.0.1:8081"
        [containerd]
        socket = "/run/containerd/containerd.sock"
        [[apps]]
        name  = "hello"
        image = "oci-archive:./hello.tar"
        hosts = ["hello.localhost"]
        slot  = "c.125-m512"
        env   = { GREETING = "hi" }
        [apps.limits]
        max_concurrent_requests = 10
        max_duration = "5m"
        idle_timeout = "60s"
        [apps.scale]
        min = 0
        max = 10
        "#,
    )
    .unwrap();
    let app = &config.apps[0];
    assert_eq!(app.name, "hello");
    assert_eq!(app.image, ImageRef::OciArchive("./hello.tar".into()));
    assert_eq!(app.env["GREETING"], "hi");
    assert_eq!(app.limits.max_duration, Duration::from_secs(300));
    assert_eq!(app.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(app.scale, Scale::default());
    assert!(!app.scale.standby);
    let cd = config.containerd.unwrap();
    assert_eq!(cd.socket, PathBuf::from("/run/containerd/containerd.sock"));
    assert_eq!(cd.namespace, "serverless");
}

#[test]
fn defaults_are_the_seeds() {
    let config = Config::from_toml(APP).unwrap();
    let app = &config.apps[0];
    assert_eq!(app.limits.max_concurrent_requests, 10);
    assert_eq!(app.limits.max_duration, Duration::from_secs(5 * 60));
    assert_eq!(app.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(app.slot.to_string(), "c.125-m512");
    assert_eq!(app.port, 8080);
    assert_eq!(config.limits.max_concurrent_requests, 500);
    assert!(config.containerd.is_none());
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn startup_cpu_boost_is_on_by_default_and_bounded() {
    use crate::cpu_boost::host_millicpu;
    use crate::CpuBoost;
    let host = host_millicpu();
    let config = Config::from_toml(APP).unwrap();
    assert_eq!(config.apps[0].startup_cpu_boost, CpuBoost::Max);
    assert_eq!(config.limits.startup_cpu_boost_millicpu, host);
    assert_eq!(config.limits.max_boosted_instances, host / 1000);

    let app = |v: &str| Config::from_toml(&format!("{APP}startup_cpu_boost = {v}\n"));
    assert_eq!(
        app("false").unwrap().apps[0].startup_cpu_boost,
        CpuBoost::Off
    );
    assert_eq!(
        app("true").unwrap().apps[0].startup_cpu_boost,
        CpuBoost::Max
    );
    assert_eq!(
        app("0.5").unwrap().apps[0].startup_cpu_boost,
        CpuBoost::Millicpu(500)
    );
    assert_eq!(
        app("1").unwrap().apps[0].startup_cpu_boost,
        CpuBoost::Millicpu(1000)
    );
    let cores = host / 1000;
    let range = format!(
        "true, false or a vCPU amount above the slot's 0.125 and at most the host's {cores} (up to 3 decimals)"
    );
    for (v, shown) in [
        ("0.125", "0.125"),
        ("0.1", "0.1"),
        ("0.1255", "0.1255"),
        ("-1", "-1"),
        (&format!("{}", cores + 1), &format!("{}", cores + 1)),
    ] {
        let Err(ConfigError::Invalid {
            field,
            value,
            expected,
        }) = app(v)
        else {
            panic!("startup_cpu_boost = {v} was accepted")
        };
        assert_eq!(
            (field.as_str(), value.as_str(), expected.as_str()),
            ("apps[0].startup_cpu_boost", shown, range.as_str())
        );
    }
    assert!(app("\"fast\"").is_err());
    // The same range for a spec built in code.
    let mut spec = app("true").unwrap().apps.remove(0);
    spec.startup_cpu_boost = CpuBoost::Millicpu(host + 1);
    assert_eq!(
        spec.validate().unwrap_err().field(),
        Some("startup_cpu_boost")
    );
    spec.startup_cpu_boost = CpuBoost::Millicpu(host);
    spec.validate().unwrap();

    let limits =
        Config::from_toml("[limits]\nmax_boosted_instances = 0\nstartup_cpu_boost = 0.5\n")
            .unwrap()
            .limits;
    assert_eq!(
        (
            limits.max_boosted_instances,
            limits.startup_cpu_boost_millicpu
        ),
        (0, 500)
    );
    assert_eq!(
        invalid("[limits]\nmax_boosted_instances = -1\n"),
        (
            "limits.max_boosted_instances".into(),
            "-1".into(),
            "an integer in 0..=10000".into()
        )
    );
    assert_eq!(
        invalid(&format!("[limits]\nstartup_cpu_boost = {}\n", cores + 1)),
        (
            "limits.startup_cpu_boost".into(),
            format!("{}", cores + 1),
            format!("a vCPU amount in 0.001..={cores} (the host's CPUs, up to 3 decimals)")
        )
    );
    // The normalized config writes the boost as written.
    let json = serde_json::to_value(&app("0.5").unwrap().apps[0]).unwrap();
    assert_eq!(json["startup_cpu_boost"], serde_json::json!(0.5));
}

#[test]
fn errors_name_field_value_and_range() {
    let cases = [
        (
            "[apps.limits]\nmax_concurrent_requests = 0",
            "apps[0].limits.max_concurrent_requests",
            "0",
            "1..=256",
        ),
        (
            "[apps.limits]\nmax_concurrent_requests = 257",
            "apps[0].limits.max_concurrent_requests",
            "257",
            "1..=256",
        ),
        (
            "[apps.limits]\nmax_duration = \"25h\"",
            "apps[0].limits.max_duration",
            "\"25h\"",
            "1s..=1day",
        ),
        (
            "[apps.limits]\nidle_timeout = \"soon\"",
            "apps[0].limits.idle_timeout",
            "\"soon\"",
            "100ms..=1day",
        ),
        (
            "[apps.limits]\nidle_timeout = -5",
            "apps[0].limits.idle_timeout",
            "-5",
            "100ms",
        ),
        (
            "[apps.scale]\nmax = 0",
            "apps[0].scale.max",
            "0",
            "1..=1000",
        ),
        (
            "[apps.scale]\nmin = 3\nmax = 2",
            "apps[0].scale.min",
            "3",
            "0..=2",
        ),
    ];
    for (extra, field, value, expected) in cases {
        let (f, v, e) = invalid(&format!("{APP}{extra}"));
        assert_eq!(f, field, "{extra}");
        assert_eq!(v, value, "{extra}");
        assert!(e.contains(expected), "{extra}: {e}");
    }
    let (f, v, e) = invalid(&APP.replace("]\n", "]\nslot = \"big\"\n"));
    assert_eq!((f.as_str(), v.as_str()), ("apps[0].slot", "\"big\""));
    assert!(e.contains("c.125-m512"), "{e}");
    let (f, _, _) = invalid(&APP.replace("hello\"", "Hello_World\""));
    assert_eq!(f, "apps[0].name");
    let (f, _, _) = invalid("listen = \"localhost\"");
    assert_eq!(f, "listen");
    let (f, _, _) = invalid(&format!(
        "{APP}{}",
        APP.replace("image", "hosts = [\"x\"]\nimage")
    ));
    assert_eq!(f, "apps[1].name");
    let (f, _, _) = invalid(&format!(
        "{APP}{}",
        APP.replace("hello\"", "other\"\nhosts = [\"hello.localhost\"]")
    ));
    assert_eq!(f, "apps[1].hosts[0]");
    let (f, _, _) = invalid(&APP.replace("hello\"\n", "hello\"\nhosts = [\"a b\"]\n"));
    assert_eq!(f, "apps[0].hosts[0]");
    let (f, _, _) = invalid(&APP.replace("oci-archive:./hello.tar", "oci-archive:"));
    assert_eq!(f, "apps[0].image");
}

#[test]
fn unknown_keys_are_errors() {
    for text in [
        format!("{APP}[apps.limits]\nmax_concurent_requests = 5"),
        format!("{APP}imagee = \"x\""),
        "lisen = \"127.0.0.1:1\"".to_string(),
        "[containerd]\nsocket = \"/x\"\nnamepsace = \"y\"".to_string(),
    ] {
        let err = Config::from_toml(&text).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}

#[test]
fn durations_accept_text_and_millis() {
    let config = Config::from_toml(&format!(
        "{APP}[apps.limits]\nmax_duration = 1500\nidle_timeout = \"250ms\"\nqueue_timeout = \"2s\""
    ))
    .unwrap();
    let l = &config.apps[0].limits;
    assert_eq!(l.max_duration, Duration::from_millis(1500));
    assert_eq!(l.idle_timeout, Duration::from_millis(250));
    assert_eq!(l.queue_timeout, Duration::from_secs(2));
}

#[test]
fn now_json_is_accepted_as_is() {
    let config = Config::from_now_json(
        r#"{"name":"hello","image":"oci-archive:hello.tar","slot":"c1-m1024",
            "limits":{"maxConcurrentReqs":4,"duration":120000,"timeout":30000}}"#,
    )
    .unwrap();
    let app = &config.apps[0];
    assert_eq!(app.limits.max_concurrent_requests, 4);
    assert_eq!(app.limits.max_duration, Duration::from_secs(120));
    assert_eq!(app.limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(app.slot.to_string(), "c1-m1024");

    let err =
        Config::from_now_json(r#"{"name":"x","image":"a/b","limits":{"maxConcurrentReqs":900}}"#)
            .unwrap_err();
    assert_eq!(err.field(), Some("limits.maxConcurrentReqs"));
    assert!(err.to_string().contains("1..=256"), "{err}");

    let err =
        Config::from_now_json(r#"{"name":"x","image":"a/b","limits":{"maxConcurentReqs":9}}"#)
            .unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn app_from_json_uses_toml_keys() {
    let app = AppSpec::from_json(
        r#"{"name":"api","image":"registry.local:5000/api:1","limits":{"idle_timeout":"5s"}}"#,
    )
    .unwrap();
    assert_eq!(
        app.image,
        ImageRef::Registry("registry.local:5000/api:1".into())
    );
    assert_eq!(app.limits.idle_timeout, Duration::from_secs(5));
    let err = AppSpec::from_json(r#"{"name":"api","image":"x","scale":{"max":5000}}"#).unwrap_err();
    assert_eq!(err.field(), Some("scale.max"));
}

#[test]
fn normalized_config_serializes() {
    let config = Config::from_toml(APP).unwrap();
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["apps"][0]["limits"]["max_duration"], "5m");
    assert_eq!(json["apps"][0]["slot"], "c.125-m512");
    assert_eq!(json["apps"][0]["image"], "oci-archive:./hello.tar");
}

#[test]
fn standby_is_a_scale_setting() {
    let config = Config::from_toml(&format!("{APP}[apps.scale]\nstandby = true\n")).unwrap();
    assert!(config.apps[0].scale.standby);
    let app = AppSpec::from_json(r#"{"name":"api","image":"x","scale":{"standby":true}}"#).unwrap();
    assert!(app.scale.standby);
    assert!(Config::from_toml(&format!("{APP}[apps.scale]\nstandby = 1\n")).is_err());
}

#[test]
fn registries_take_a_password_source_never_a_password() {
    let config = Config::from_toml(
        r#"
        [[registries]]
        host = "ghcr.io"
        username = "robot"
        password_env = "GHCR_TOKEN"
        [[registries]]
        host = "127.0.0.1:5000"
        username = "ci"
        password_file = "/run/secrets/registry"
        [[registries]]
        host = "[::1]:5000"
        username = "v6"
        password_env = "V6"
        "#,
    )
    .unwrap();
    assert_eq!(
        config.registries[0],
        RegistryCredentials {
            host: "ghcr.io".into(),
            username: "robot".into(),
            password: SecretSource::Env("GHCR_TOKEN".into()),
        }
    );
    assert_eq!(
        config.registries[1].password,
        SecretSource::File("/run/secrets/registry".into())
    );
    assert_eq!(config.registries[2].host, "[::1]:5000");
    let config = Config::from_toml("registry_auth_file = \"/root/.docker/config.json\"").unwrap();
    assert_eq!(
        config.registry_auth_file.as_deref(),
        Some(Path::new("/root/.docker/config.json"))
    );

    let reg = |body: &str| invalid(&format!("[[registries]]\n{body}"));
    for host in [
        "https://ghcr.io",
        "ghcr.io/org",
        "GHCR.io",
        "host:0",
        "host:99999",
        "host:",
        "",
        "[::1",
    ] {
        let (field, value, expected) = reg(&format!(
            "host = {host:?}\nusername = \"u\"\npassword_env = \"P\""
        ));
        assert_eq!(field, "registries[0].host", "{host}");
        assert_eq!(value, format!("{host:?}"));
        assert!(expected.contains("host:port"), "{expected}");
    }
    let (field, value, _) = reg("host = \"a.io\"\nusername = \"u:x\"\npassword_env = \"P\"");
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("registries[0].username", "\"u:x\"")
    );
    let (field, value, expected) = reg("host = \"a.io\"\nusername = \"u\"");
    assert_eq!(field, "registries[0]");
    assert_eq!(value, "no password_env or password_file");
    assert!(expected.contains("not written in the config"), "{expected}");
    let (_, value, _) =
        reg("host = \"a.io\"\nusername = \"u\"\npassword_env = \"P\"\npassword_file = \"/f\"");
    assert_eq!(value, "both password_env and password_file");
    let (field, _, _) = reg("host = \"a.io\"\nusername = \"u\"\npassword_env = \"A=B\"");
    assert_eq!(field, "registries[0].password_env");
    // An inline password is an unknown key, not silently accepted.
    assert!(Config::from_toml(
        "[[registries]]\nhost = \"a.io\"\nusername = \"u\"\npassword = \"hunter2\""
    )
    .unwrap_err()
    .to_string()
    .contains("password"));
    let (field, value, expected) = invalid(
        "[[registries]]\nhost = \"a.io\"\nusername = \"u\"\npassword_env = \"P\"\n\
         [[registries]]\nhost = \"a.io\"\nusername = \"v\"\npassword_env = \"Q\"",
    );
    assert_eq!(
        (field.as_str(), value.as_str(), expected.as_str()),
        (
            "registries[1].host",
            "\"a.io\"",
            "a registry not listed before"
        )
    );
}

#[test]
fn secrets_are_read_from_env_or_file() {
    let dir = std::env::temp_dir().join(format!("sl-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    assert_eq!(SecretSource::File(file.clone()).read().unwrap(), "s3cret");
    std::fs::write(&file, "\n").unwrap();
    let empty = SecretSource::File(file.clone()).read().unwrap_err();
    assert_eq!(empty.problem, SecretProblem::Empty);
    assert!(empty.to_string().ends_with("pw is empty"), "{empty}");
    let missing = SecretSource::File(dir.join("nope")).read().unwrap_err();
    assert!(matches!(missing.problem, SecretProblem::Unreadable(_)));
    assert!(
        missing.to_string().contains("nope could not be read"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // PATH is set in any test environment; a variable with this name is not.
    assert!(!SecretSource::Env("PATH".into()).read().unwrap().is_empty());
    let unset = SecretSource::Env("SERVERLESS_TEST_SURELY_UNSET_VARIABLE".into())
        .read()
        .unwrap_err();
    assert_eq!(
        unset.to_string(),
        "environment variable SERVERLESS_TEST_SURELY_UNSET_VARIABLE is not set"
    );
}

#[test]
fn the_lean_client_is_on_unless_the_bench_turns_it_off() {
    assert!(Config::from_toml(APP).unwrap().server.lean_client);
    let off = Config::from_toml(&format!("[server]\nlean_client = false\n{APP}")).unwrap();
    assert!(!off.server.lean_client);
}

#[test]
fn upstream_timeouts_parse_default_and_are_bounded() {
    let l = &Config::from_toml(APP).unwrap().apps[0].limits;
    assert_eq!(l.response_timeout, Duration::from_secs(300));
    assert_eq!(l.body_idle_timeout, Duration::from_secs(60));
    let config = Config::from_toml(&format!(
        "{APP}[apps.limits]\nresponse_timeout = \"2s\"\nbody_idle_timeout = 500"
    ))
    .unwrap();
    let l = &config.apps[0].limits;
    assert_eq!(l.response_timeout, Duration::from_secs(2));
    assert_eq!(l.body_idle_timeout, Duration::from_millis(500));
    for (extra, field, value) in [
        (
            "response_timeout = \"2h\"",
            "apps[0].limits.response_timeout",
            "\"2h\"",
        ),
        (
            "response_timeout = 10",
            "apps[0].limits.response_timeout",
            "10",
        ),
        (
            "body_idle_timeout = \"0s\"",
            "apps[0].limits.body_idle_timeout",
            "\"0s\"",
        ),
        (
            "body_idle_timeout = \"soon\"",
            "apps[0].limits.body_idle_timeout",
            "\"soon\"",
        ),
    ] {
        let (f, v, e) = invalid(&format!("{APP}[apps.limits]\n{extra}"));
        assert_eq!((f.as_str(), v.as_str()), (field, value), "{extra}");
        assert!(e.contains("100ms..=1h"), "{extra}: {e}");
    }
    let mut app = config.apps[0].clone();
    app.limits.body_idle_timeout = Duration::ZERO;
    let err = app.validate().unwrap_err().to_string();
    assert!(err.contains("limits.body_idle_timeout"), "{err}");
    app.limits.body_idle_timeout = Duration::from_secs(1);
    app.limits.response_timeout = Duration::from_secs(7200);
    let err = app.validate().unwrap_err().to_string();
    assert!(err.contains("limits.response_timeout"), "{err}");
}

#[test]
fn a_serialized_app_spec_reads_back_as_itself() {
    // The CLI's `deploy` sends the spec it parsed as JSON; the admin API parses it again.
    let config = Config::from_toml(
        r#"
        [[apps]]
        name = "api"
        image = "example/api:1"
        slot = "c.5-m256"
        network = "bridge"
        startup_cpu_boost = false
        env = { A = "1" }
        [apps.limits]
        response_timeout = "2m"
        body_idle_timeout = "250ms"
        [apps.scale]
        min = 1
        standby = true
        [apps.security]
        seccomp = "unconfined"
        init = false
        capabilities = { add = ["NET_RAW"] }
    "#,
    )
    .unwrap();
    for app in [
        config.apps[0].clone(),
        AppSpec::new("plain", ImageRef::Registry("x:1".into())),
    ] {
        let json = serde_json::to_string(&app).unwrap();
        assert_eq!(AppSpec::from_json(&json).unwrap(), app, "{json}");
    }
}

#[test]
fn the_kubernetes_table_selects_pods_and_is_checked() {
    let config = Config::from_toml(
        "[kubernetes]\nnamespace = \"apps\"\nkubeconfig = \"/etc/kube.yaml\"\ngateway = \"gw-1\"\n",
    )
    .unwrap();
    let k = config.kubernetes.unwrap();
    assert_eq!(k.namespace.as_deref(), Some("apps"));
    assert_eq!(k.gateway.as_deref(), Some("gw-1"));
    assert_eq!(
        Config::from_toml("[kubernetes]\n").unwrap().kubernetes,
        Some(KubernetesConfig {
            namespace: None,
            kubeconfig: None,
            gateway: None
        })
    );
    let (field, value, _) = invalid("[kubernetes]\nnamespace = \"Apps_1\"\n");
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("kubernetes.namespace", "\"Apps_1\"")
    );
    let (field, _, _) = invalid("[kubernetes]\ngateway = \"-x\"\n");
    assert_eq!(field, "kubernetes.gateway");
    let (field, _, range) = invalid("[containerd]\nsocket = \"/run/c.sock\"\n[kubernetes]\n");
    assert_eq!(field, "kubernetes");
    assert!(range.contains("not both"), "{range}");
}
