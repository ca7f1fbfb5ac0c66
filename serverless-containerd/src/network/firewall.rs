//! The isolation rules of the bridge: an instance may open connections out (egress through
//! NAT) but not to the host's own services nor to another instance. Rules, in `iptables`
//! (the backend the CNI plugins use):
//!
//! - `INPUT -i <bridge>` jumps to `SLS-IN-<bridge>`: replies to connections the host opened
//!   pass, anything else an instance sends to one of the host's addresses (the gateway's and
//!   admin ports, any service bound on the host) is rejected.
//! - `FORWARD -i <bridge> -o <bridge>` and the same in `CNI-ADMIN` (which the firewall plugin
//!   runs before its own accepts) reject an instance's routed traffic to another instance.
//! - Every bridge port is `isolated`: instances cannot reach each other at layer 2 either
//!   (forwarding between isolated ports is off), while the bridge itself still answers.
//!
//! The gateway does not use the bridge: it dials `127.0.0.1` inside the instance's namespace.

use std::path::Path;

use super::NetworkError;

fn input_chain(bridge: &str) -> String {
    format!("SLS-IN-{bridge}")
}

/// The rules of the input chain, in order.
const INPUT_RULES: [&[&str]; 3] = [
    &[
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ],
    &["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    &["-j", "REJECT"],
];

/// Installs the rules of `bridge`. Idempotent: a chain that already holds exactly these rules
/// (a previous run's, whose instances a restarted engine adopted) is left as it is, since
/// emptying and refilling it would leave those instances unisolated in between; any other
/// content is replaced.
pub(crate) async fn install(bridge: &str, host_netns: Option<&Path>) -> Result<(), NetworkError> {
    let chain = input_chain(bridge);
    let created = run(host_netns, &["-N", &chain]).await.is_ok();
    if created || !holds_input_rules(host_netns, &chain).await {
        if !created {
            run(host_netns, &["-F", &chain]).await?;
        }
        for rule in INPUT_RULES {
            let mut append = vec!["-A", chain.as_str()];
            append.extend_from_slice(rule);
            run(host_netns, &append).await?;
        }
    }
    ensure_first(host_netns, "INPUT", &["-i", bridge, "-j", &chain]).await?;
    let _ = run(host_netns, &["-N", "CNI-ADMIN"]).await;
    for base in ["FORWARD", "CNI-ADMIN"] {
        ensure_first(
            host_netns,
            base,
            &["-i", bridge, "-o", bridge, "-j", "REJECT"],
        )
        .await?;
    }
    Ok(())
}

/// Whether `chain` holds [`INPUT_RULES`] and nothing else.
async fn holds_input_rules(host_netns: Option<&Path>, chain: &str) -> bool {
    for rule in INPUT_RULES {
        let mut check = vec!["-C", chain];
        check.extend_from_slice(rule);
        if run(host_netns, &check).await.is_err() {
            return false;
        }
    }
    // `-S` lists the chain (`-N`) and then one line per rule.
    output(host_netns, false, "iptables", &["-w", "5", "-S", chain])
        .await
        .is_ok_and(|listed| listed.lines().count() == INPUT_RULES.len() + 1)
}

/// Whether the chain of `bridge` exists (this run's or a previous one's).
pub(crate) async fn installed(bridge: &str, host_netns: Option<&Path>) -> bool {
    run(host_netns, &["-S", &input_chain(bridge)]).await.is_ok()
}

/// Removes the rules of `bridge`; what is already gone is fine.
pub(crate) async fn uninstall(bridge: &str, host_netns: Option<&Path>) {
    let chain = input_chain(bridge);
    while run(host_netns, &["-D", "INPUT", "-i", bridge, "-j", &chain])
        .await
        .is_ok()
    {}
    for base in ["FORWARD", "CNI-ADMIN"] {
        while run(
            host_netns,
            &["-D", base, "-i", bridge, "-o", bridge, "-j", "REJECT"],
        )
        .await
        .is_ok()
        {}
    }
    let _ = run(host_netns, &["-F", &chain]).await;
    let _ = run(host_netns, &["-X", &chain]).await;
}

/// Turns on port isolation of a bridge port (the host side of an instance's veth).
pub(crate) async fn isolate_port(
    veth: &str,
    host_netns: Option<&Path>,
    background: bool,
) -> Result<(), NetworkError> {
    command(
        host_netns,
        background,
        "ip",
        &[
            "link",
            "set",
            "dev",
            veth,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ],
    )
    .await
}

async fn ensure_first(
    host_netns: Option<&Path>,
    base: &str,
    rule: &[&str],
) -> Result<(), NetworkError> {
    let mut check = vec!["-C", base];
    check.extend_from_slice(rule);
    if run(host_netns, &check).await.is_ok() {
        return Ok(());
    }
    let mut insert = vec!["-I", base, "1"];
    insert.extend_from_slice(rule);
    run(host_netns, &insert).await
}

async fn run(host_netns: Option<&Path>, args: &[&str]) -> Result<(), NetworkError> {
    let mut all = vec!["-w", "5"];
    all.extend_from_slice(args);
    command(host_netns, false, "iptables", &all).await
}

/// Runs `program` (in `host_netns` when set) and fails with its stderr.
async fn command(
    host_netns: Option<&Path>,
    background: bool,
    program: &str,
    args: &[&str],
) -> Result<(), NetworkError> {
    output(host_netns, background, program, args)
        .await
        .map(drop)
}

/// Runs `program` (in `host_netns` when set): its stdout, or a failure with its stderr.
async fn output(
    host_netns: Option<&Path>,
    background: bool,
    program: &str,
    args: &[&str],
) -> Result<String, NetworkError> {
    let mut cmd = super::plumbing(host_netns, Path::new(program), background);
    let out = cmd
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| NetworkError::Io(format!("running {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Command(
            format!("{program} {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}
