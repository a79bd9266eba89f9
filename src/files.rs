//! Per-session /etc/netns/NAME/{resolv.conf,hosts}: `ip netns exec`, `sessiond exec` and the
//! PAM module bind-mount these over /etc so DNS and the local host name work inside.
use std::net::Ipv4Addr;

/// `/etc/netns/NAME`: entering a session (in the small crate) reads it, the daemon writes it.
pub use sessiond_client::enter::{ETC_NETNS, netns_etc_dir};
/// Where the files really are: /etc/netns/NAME is a symlink to RUN_NETNS_ETC/NAME. They are
/// runtime files (rewritten from the lease; gone with the session), and on the root disk each
/// session's directory and two files cost new inodes at every start (see docs/performance.md).
pub const RUN_NETNS_ETC: &str = "/run/sessiond/etc-netns";

pub fn resolv_conf(dns: &[Ipv4Addr], domain: Option<&str>, search: &[String]) -> String {
    let mut s = String::from("# written by sessiond for this session\n");
    let mut domains: Vec<&str> = search.iter().map(String::as_str).collect();
    if domains.is_empty()
        && let Some(d) = domain
    {
        domains.push(d);
    }
    // resolv.conf lines cannot carry whitespace or newlines inside a name.
    let domains: Vec<&str> = domains.into_iter().filter(|d| !d.is_empty() && !d.chars().any(|c| c.is_whitespace() || c.is_control())).collect();
    if !domains.is_empty() {
        s.push_str(&format!("search {}\n", domains.join(" ")));
    }
    // glibc reads at most three nameservers.
    for ns in dns.iter().take(3) {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    s
}

/// The machine's host name resolves to the session's own address (as RDS does for the
/// local host name); `localhost` stays 127.0.0.1.
pub fn hosts(hostname: &str, address: Option<Ipv4Addr>, loopback: Ipv4Addr) -> String {
    let mut s = String::from("# written by sessiond for this session\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let short = hostname.split('.').next().unwrap_or(hostname);
    let names = if short != hostname { format!("{hostname} {short}") } else { hostname.to_string() };
    match address {
        Some(a) => s.push_str(&format!("{a}\t{names}\n")),
        None => s.push_str(&format!("{loopback}\t{names}\n")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_contents() {
        let dns = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"].map(|s| s.parse().unwrap());
        let r = resolv_conf(&dns, Some("lan"), &[]);
        assert!(r.contains("search lan\n"));
        assert!(r.contains("nameserver 10.0.0.3\n"));
        assert!(!r.contains("10.0.0.4"), "glibc only reads three");
        let r = resolv_conf(&dns[..1], Some("lan"), &["a.test".into(), "bad name".into()]);
        assert!(r.contains("search a.test\n"), "{r}");
        assert!(!r.contains("lan"));
        assert_eq!(resolv_conf(&[], None, &[]).lines().count(), 1);
    }

    #[test]
    fn hosts_maps_hostname_to_session_address() {
        let lo = "127.0.0.2".parse().unwrap();
        let h = hosts("ts1.example.org", Some("10.0.0.100".parse().unwrap()), lo);
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.0.0.100\tts1.example.org ts1\n"), "{h}");
        let h = hosts("ts1", None, lo);
        assert!(h.contains("127.0.0.2\tts1\n"), "{h}");
    }
}
