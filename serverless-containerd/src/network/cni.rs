//! Running CNI plugins directly, as the CNI spec describes: each plugin of the conflist's chain
//! is executed with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH`
//! in its environment and its network config (the plugin's entry with the list's `name`,
//! `cniVersion` and the previous plugin's result as `prevResult`) on stdin.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::NetworkError;

/// Where the plugin binaries are looked for: Debian's package, then the upstream location.
pub(crate) const CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";

/// The interface name inside the instance.
pub(crate) const IFNAME: &str = "eth0";

/// One invocation's arguments.
pub(crate) struct Invocation<'a> {
    pub(crate) container_id: &'a str,
    pub(crate) netns: &'a Path,
    /// When set, plugins run inside this network namespace (via `nsenter`): the bridge, its
    /// NAT and routes live there instead of in the engine's own namespace.
    pub(crate) host_netns: Option<&'a Path>,
    /// Off the request's path: the plugins run at the lowest CPU priority.
    pub(crate) background: bool,
}

/// The conflist's chain run with ADD; returns the last plugin's result.
pub(crate) async fn add(conflist: &Value, inv: &Invocation<'_>) -> Result<Value, NetworkError> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(conflist)? {
        let result = exec("ADD", conflist, plugin, prev.as_ref(), inv).await?;
        prev = Some(result);
    }
    prev.ok_or_else(|| NetworkError::Cni("the conflist has no plugins".to_owned()))
}

/// The chain run with DEL, last plugin first; `prev` is the cached ADD result, if any. Every
/// plugin is run even when one fails; the first failure is returned.
pub(crate) async fn del(
    conflist: &Value,
    prev: Option<&Value>,
    inv: &Invocation<'_>,
) -> Result<(), NetworkError> {
    let mut first_err = None;
    for plugin in plugins(conflist)?.iter().rev() {
        if let Err(e) = exec("DEL", conflist, plugin, prev, inv).await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>, NetworkError> {
    conflist["plugins"]
        .as_array()
        .ok_or_else(|| NetworkError::Cni("the conflist has no \"plugins\" array".to_owned()))
}

async fn exec(
    command: &str,
    conflist: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    inv: &Invocation<'_>,
) -> Result<Value, NetworkError> {
    let typ = plugin["type"]
        .as_str()
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| NetworkError::Cni(format!("a plugin without a valid \"type\": {plugin}")))?;
    let binary = find(typ)
        .ok_or_else(|| NetworkError::Cni(format!("CNI plugin {typ} not found in {CNI_PATH}")))?;
    let mut config = plugin.clone();
    config["name"] = conflist["name"].clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    let stdin = serde_json::to_vec(&config).map_err(|e| NetworkError::Cni(e.to_string()))?;
    let mut cmd = super::plumbing(inv.host_netns, &binary, inv.background);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| NetworkError::Io(format!("running {}", binary.display()), e))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(&stdin)
            .await
            .map_err(|e| NetworkError::Io(format!("writing to {typ}"), e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::Io(format!("waiting for {typ}"), e))?;
    if !out.status.success() {
        // Plugins report errors as JSON on stdout: {"code", "msg", "details"}.
        let msg = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                let msg = v["msg"].as_str()?.to_owned();
                Some(match v["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg,
                })
            })
            .unwrap_or_else(|| {
                String::from_utf8_lossy(if out.stdout.is_empty() {
                    &out.stderr
                } else {
                    &out.stdout
                })
                .trim()
                .to_owned()
            });
        return Err(NetworkError::Cni(format!("{typ} {command}: {msg}")));
    }
    if command != "ADD" {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| NetworkError::Cni(format!("{typ} ADD returned no JSON result: {e}")))
}

pub(crate) fn find(typ: &str) -> Option<PathBuf> {
    CNI_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(typ))
        .find(|p| p.is_file())
}

/// The conflist the engine writes: the bridge plugin (veth into `bridge`, the bridge as the
/// instances' gateway, masquerade for egress) with host-local addresses from `subnet` kept
/// under `ipam_dir`, then the firewall plugin (accepts the instance's forwarded traffic even
/// where the FORWARD policy drops).
pub(crate) fn default_conflist(bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "serverless",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir,
                }
            },
            { "type": "firewall", "backend": "iptables" }
        ]
    })
}

/// The instance's address and the bridge-side veth from an ADD result.
pub(crate) fn parse_result(result: &Value) -> (Option<String>, Option<String>) {
    let ip = result["ips"]
        .as_array()
        .and_then(|ips| ips.first())
        .and_then(|ip| ip["address"].as_str())
        .and_then(|a| a.split('/').next())
        .map(str::to_owned);
    let host_veth = result["interfaces"].as_array().and_then(|ifs| {
        ifs.iter()
            .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
            .filter_map(|i| i["name"].as_str())
            .find(|n| n.starts_with("veth"))
            .map(str::to_owned)
    });
    (ip, host_veth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_gives_address_and_host_veth() {
        let result = json!({
            "interfaces": [
                {"name": "sls0", "mac": "x"},
                {"name": "veth1234", "mac": "y"},
                {"name": "eth0", "mac": "z", "sandbox": "/run/netns/a"}
            ],
            "ips": [{"address": "10.73.0.5/16", "gateway": "10.73.0.1", "interface": 2}]
        });
        assert_eq!(
            parse_result(&result),
            (Some("10.73.0.5".to_owned()), Some("veth1234".to_owned()))
        );
    }

    #[test]
    fn default_conflist_names_bridge_subnet_and_lease_dir() {
        let c = default_conflist("sls0", "10.73.0.0/16", Path::new("/d/ipam"));
        assert_eq!(c["plugins"][0]["bridge"], "sls0");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.73.0.0/16"
        );
        assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/d/ipam");
        assert_eq!(c["plugins"][1]["type"], "firewall");
    }
}
