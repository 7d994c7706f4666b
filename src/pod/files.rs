//! The files a pod shares with its containers: /etc/hosts, /etc/resolv.conf
//! and /etc/hostname. Pure text builders plus one blocking writer.

use std::path::Path;

use crate::proto;

/// resolv.conf from the pod's DNS config; `None` means: copy the host's.
pub fn resolv_conf(dns: Option<&proto::DnsConfig>) -> Option<String> {
    let dns = dns?;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(text)
}

/// The pod's own /etc/hosts (the kubelet adds its entries with a mount of
/// its own when it manages the file).
pub fn hosts(hostname: &str) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    text
}

/// Writes the three files into `dir`. Host-network pods get the host's
/// hosts file and hostname. Blocking.
pub fn write_pod_files(
    dir: &Path,
    config: &proto::PodSandboxConfig,
    host_network: bool,
) -> std::io::Result<()> {
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    let hosts_text = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(&hostname))
    } else {
        hosts(&hostname)
    };
    let resolv = match resolv_conf(config.dns_config.as_ref()) {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("hosts"), hosts_text)?;
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = proto::DnsConfig {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(Some(&proto::DnsConfig::default())), None);
        assert_eq!(resolv_conf(None), None);
    }

    #[test]
    fn hosts_names_the_pod() {
        let text = hosts("web-0");
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("127.0.1.1\tweb-0\n"));
    }
}
