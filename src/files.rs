//! Per-session /etc/netns/NAME/{resolv.conf,hosts}: `ip netns exec`, `sessiond exec` and the
//! PAM module bind-mount these over /etc so DNS and the local host name work inside.
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

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

/// What IPv6 adds to a session's files: DHCPv6's DNS servers (option 23) and search list
/// (24) to resolv.conf, the session's IPv6 address to hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Names {
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub address: Option<Ipv6Addr>,
}

/// `contents` (a session file as IPv4 wrote it: `resolv_conf`, `hosts`) with `v6` merged in:
/// the IPv6 search domains after the IPv4 ones, the IPv6 name servers after the IPv4 ones
/// (glibc reads three), and the host names of the session's address line mapped to the
/// IPv6 address too. Other files pass unchanged.
pub fn with_ipv6(file: &str, contents: &str, v6: &Ipv6Names) -> String {
    match file {
        "resolv.conf" if !v6.dns.is_empty() || !v6.search.is_empty() => {
            let mut search: Vec<String> = Vec::new();
            let mut servers: Vec<String> = Vec::new();
            let mut head = String::new();
            for line in contents.lines() {
                if let Some(s) = line.strip_prefix("search ") {
                    search.extend(s.split_whitespace().map(String::from));
                } else if let Some(n) = line.strip_prefix("nameserver ") {
                    servers.push(n.trim().to_string());
                } else {
                    head.push_str(line);
                    head.push('\n');
                }
            }
            for d in &v6.search {
                if !d.is_empty() && !d.chars().any(|c| c.is_whitespace() || c.is_control()) && !search.contains(d) {
                    search.push(d.clone());
                }
            }
            servers.extend(v6.dns.iter().map(Ipv6Addr::to_string).filter(|s| !servers.contains(s)).collect::<Vec<_>>());
            let mut s = head;
            if !search.is_empty() {
                s.push_str(&format!("search {}\n", search.join(" ")));
            }
            for ns in servers.iter().take(3) {
                s.push_str(&format!("nameserver {ns}\n"));
            }
            s
        }
        "hosts" => match (v6.address, contents.lines().last().and_then(|l| l.split_once('\t'))) {
            (Some(a), Some((_, names))) => format!("{contents}{a}\t{names}\n"),
            _ => contents.to_string(),
        },
        _ => contents.to_string(),
    }
}

/// The session files as written, each the IPv4 part and the IPv6 part, so that either side's
/// change rewrites the file with both: the one place the two are merged.
#[derive(Default)]
pub struct MergedFiles {
    /// (netns, file) -> the contents IPv4 wrote.
    v4: HashMap<(String, String), String>,
    v6: HashMap<String, Ipv6Names>,
}

impl MergedFiles {
    /// IPv4 writes `contents`: what to put in the file.
    pub fn write_v4(&mut self, netns: &str, file: &str, contents: &str) -> String {
        self.v4.insert((netns.to_string(), file.to_string()), contents.to_string());
        match self.v6.get(netns) {
            Some(v6) => with_ipv6(file, contents, v6),
            None => contents.to_string(),
        }
    }

    /// IPv6 changes: the files to rewrite, (file, contents); none while IPv4 wrote none.
    pub fn set_v6(&mut self, netns: &str, v6: Ipv6Names) -> Vec<(String, String)> {
        let out = ["resolv.conf", "hosts"]
            .into_iter()
            .filter_map(|f| self.v4.get(&(netns.to_string(), f.to_string())).map(|c| (f.to_string(), with_ipv6(f, c, &v6))))
            .collect();
        self.v6.insert(netns.to_string(), v6);
        out
    }

    /// The session's files are gone.
    pub fn forget(&mut self, netns: &str) {
        self.v4.retain(|(n, _), _| n != netns);
        self.v6.remove(netns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_dns_search_and_address_are_merged_after_the_ipv4_ones() {
        let v4 = resolv_conf(&["10.0.0.1".parse().unwrap()], Some("lan"), &[]);
        let v6 = Ipv6Names {
            dns: vec!["2001:db8::53".parse().unwrap(), "2001:db8::54".parse().unwrap(), "2001:db8::55".parse().unwrap()],
            search: vec!["v6.example".into(), "lan".into(), "bad name".into()],
            address: Some("2001:db8::5".parse().unwrap()),
        };
        let r = with_ipv6("resolv.conf", &v4, &v6);
        assert_eq!(r, "# written by sessiond for this session\nsearch lan v6.example\nnameserver 10.0.0.1\nnameserver 2001:db8::53\nnameserver 2001:db8::54\n");
        let h = with_ipv6("hosts", &hosts("ts1.example.org", Some("10.0.0.100".parse().unwrap()), "127.0.0.2".parse().unwrap()), &v6);
        assert!(h.ends_with("10.0.0.100\tts1.example.org ts1\n2001:db8::5\tts1.example.org ts1\n"), "{h}");
        assert_eq!(with_ipv6("resolv.conf", &v4, &Ipv6Names::default()), v4, "nothing to add");
        assert_eq!(with_ipv6("hosts", "x\n", &Ipv6Names::default()), "x\n");

        let mut m = MergedFiles::default();
        assert!(m.set_v6("sessiond-1", v6.clone()).is_empty(), "nothing written before IPv4 wrote");
        assert_eq!(m.write_v4("sessiond-1", "resolv.conf", &v4), r, "IPv4 rewrites keep the IPv6 part");
        let again = m.set_v6("sessiond-1", Ipv6Names { address: None, ..v6 });
        assert_eq!(again.len(), 1, "only resolv.conf was written by IPv4: {again:?}");
        m.forget("sessiond-1");
        assert_eq!(m.write_v4("sessiond-1", "resolv.conf", &v4), v4);
    }

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
