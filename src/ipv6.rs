//! A session's IPv6: the sysctls that decide how its uplink forms addresses (set in the new
//! namespace's `default` row, before the uplink exists, so the uplink is born with them), and
//! what `status` reads back from the namespace. The kernel does SLAAC itself: it accepts the
//! router advertisements and forms RFC 7217 stable addresses keyed by the slot's secret.
use std::net::Ipv6Addr;

use sessiond_client::record::{Address6, Address6Origin};

use crate::config::{Ipv6Mode, Ipv6State};
use crate::netlink::{Addr6, NetError, NetOps};

/// The IPv6 sysctls of a new session namespace, in the order they must be written (the
/// kernel refuses stable_privacy before a secret is set). Keys under `net.ipv6.conf.default`:
/// a link made in the namespace afterwards (the uplink, also when re-created) copies them;
/// `lo`, which exists already, keeps `::1`.
pub fn sysctls(mode: Ipv6Mode, privacy: bool, stable_secret: Ipv6Addr, optimistic_dad: bool) -> Vec<(&'static str, String)> {
    if mode == Ipv6Mode::Off {
        return vec![("net.ipv6.conf.default.disable_ipv6", "1".into())];
    }
    let mut s = vec![
        ("net.ipv6.conf.default.stable_secret", stable_secret.to_string()),
        // 2: IN6_ADDR_GEN_MODE_STABLE_PRIVACY (RFC 7217, keyed by stable_secret), for the
        // link-local address too. (3, STABLE_PRIVACY with a *random* secret when none is set,
        // would give a new address per boot; a link made after the secret is set gets 2.)
        ("net.ipv6.conf.default.addr_gen_mode", "2".into()),
        // RAs give the default route in every mode; dhcpv6 takes no address from them.
        ("net.ipv6.conf.default.accept_ra", "1".into()),
        ("net.ipv6.conf.default.autoconf", if mode == Ipv6Mode::Dhcpv6 { "0" } else { "1" }.into()),
        // 2: form temporary addresses and prefer them as sources (RFC 8981).
        ("net.ipv6.conf.default.use_tempaddr", if privacy { "2" } else { "0" }.into()),
    ];
    if optimistic_dad {
        // RFC 4429: an address is usable while its DAD runs, so a start does not wait ~1 s.
        s.push(("net.ipv6.conf.default.optimistic_dad", "1".into()));
        s.push(("net.ipv6.conf.default.use_optimistic", "1".into()));
    }
    s
}

/// Whether this kernel has optimistic DAD (CONFIG_IPV6_OPTIMISTIC_DAD): its sysctl exists.
pub fn kernel_has_optimistic_dad() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6/conf/default/optimistic_dad").exists()
}

/// What `status` shows of one kernel address; None for one whose DAD failed (never used).
pub fn classify(a: &Addr6) -> Option<Address6> {
    if a.dad_failed {
        return None;
    }
    let link_local = (a.net.addr().segments()[0] & 0xffc0) == 0xfe80;
    let origin = if link_local {
        Address6Origin::LinkLocal
    } else if a.from_dhcpv6 {
        Address6Origin::Dhcpv6
    } else if a.temporary {
        Address6Origin::Temporary
    } else if a.from_ra {
        Address6Origin::Slaac
    } else {
        Address6Origin::Other
    };
    Some(Address6 { address: a.net, origin, valid_secs: a.valid_secs, preferred_secs: a.preferred_secs, tentative: a.tentative })
}

/// The session's IPv6 state from its mode and its uplink's addresses.
pub fn state(mode: Ipv6Mode, addresses: &[Address6]) -> Ipv6State {
    if mode == Ipv6Mode::Off {
        return Ipv6State::Off;
    }
    let usable = |origins: &[Address6Origin]| addresses.iter().any(|a| !a.tentative && origins.contains(&a.origin));
    if usable(&[Address6Origin::Dhcpv6]) {
        Ipv6State::Dhcpv6
    } else if usable(&[Address6Origin::Slaac, Address6Origin::Temporary]) {
        Ipv6State::Slaac
    } else {
        Ipv6State::Waiting
    }
}

/// Reads the state and addresses of the uplink `name` through `inside` (its namespace).
pub async fn read<N: NetOps>(inside: &N, name: &str, mode: Ipv6Mode) -> Result<(Ipv6State, Vec<Address6>), NetError> {
    let addresses: Vec<Address6> = inside.addrs6(name).await?.iter().filter_map(classify).collect();
    Ok((state(mode, &addresses), addresses))
}

/// "2001:db8::5/64 slaac, valid 86390 s, preferred 14390 s" for `status`'s text view.
pub fn describe(a: &Address6) -> String {
    let secs = |s: Option<u32>| s.map_or_else(|| "forever".to_string(), |s| format!("{s} s"));
    let tentative = if a.tentative { ", tentative" } else { "" };
    format!("{} {}, valid {}, preferred {}{tentative}", a.address, a.origin, secs(a.valid_secs), secs(a.preferred_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(net: &str, from_ra: bool) -> Addr6 {
        Addr6 {
            net: net.parse().unwrap(),
            from_ra,
            temporary: false,
            tentative: false,
            dad_failed: false,
            from_dhcpv6: false,
            valid_secs: Some(86400),
            preferred_secs: Some(14400),
        }
    }

    #[test]
    fn off_disables_ipv6_on_the_uplink_only() {
        let s = sysctls(Ipv6Mode::Off, true, Ipv6Addr::LOCALHOST, true);
        assert_eq!(s, vec![("net.ipv6.conf.default.disable_ipv6", "1".to_string())]);
    }

    #[test]
    fn stable_privacy_with_the_slot_secret_set_first() {
        let secret: Ipv6Addr = "1:2:3:4:5:6:7:8".parse().unwrap();
        let s = sysctls(Ipv6Mode::Auto, false, secret, false);
        let keys: Vec<&str> = s.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[..2], ["net.ipv6.conf.default.stable_secret", "net.ipv6.conf.default.addr_gen_mode"], "the kernel needs the secret first");
        let get = |s: &[(&str, String)], k: &str| s.iter().find(|(key, _)| key.ends_with(k)).map(|(_, v)| v.clone());
        assert_eq!(get(&s, ".stable_secret").as_deref(), Some("1:2:3:4:5:6:7:8"));
        assert_eq!(get(&s, ".addr_gen_mode").as_deref(), Some("2"));
        assert_eq!(get(&s, ".autoconf").as_deref(), Some("1"));
        assert_eq!(get(&s, ".use_tempaddr").as_deref(), Some("0"));
        assert_eq!(get(&s, ".optimistic_dad"), None, "only where the kernel has it");
        let p = sysctls(Ipv6Mode::Slaac, true, secret, true);
        assert_eq!(get(&p, ".use_tempaddr").as_deref(), Some("2"));
        assert_eq!(get(&p, ".optimistic_dad").as_deref(), Some("1"));
        let d = sysctls(Ipv6Mode::Dhcpv6, false, secret, false);
        assert_eq!((get(&d, ".autoconf").as_deref(), get(&d, ".accept_ra").as_deref()), (Some("0"), Some("1")), "routes from RAs, no SLAAC address");
    }

    #[test]
    fn origins_and_state() {
        let ll = classify(&kernel("fe80::1234/64", false)).unwrap();
        assert_eq!(ll.origin, Address6Origin::LinkLocal);
        let slaac = classify(&kernel("2001:db8:1::5/64", true)).unwrap();
        assert_eq!((slaac.origin, slaac.valid_secs), (Address6Origin::Slaac, Some(86400)));
        let temp = classify(&Addr6 { temporary: true, ..kernel("2001:db8:1::9/64", true) }).unwrap();
        assert_eq!(temp.origin, Address6Origin::Temporary);
        let manual = classify(&Addr6 { valid_secs: None, preferred_secs: None, ..kernel("2001:db8:2::1/64", false) }).unwrap();
        assert_eq!(manual.origin, Address6Origin::Other);
        assert_eq!(describe(&manual), "2001:db8:2::1/64 other, valid forever, preferred forever");
        assert_eq!(classify(&Addr6 { dad_failed: true, ..kernel("2001:db8:1::7/64", true) }), None);

        assert_eq!(state(Ipv6Mode::Auto, std::slice::from_ref(&ll)), Ipv6State::Waiting, "link-local only: no router yet");
        let tentative = Address6 { tentative: true, ..slaac.clone() };
        assert_eq!(state(Ipv6Mode::Auto, &[ll.clone(), tentative]), Ipv6State::Waiting, "DAD still running");
        assert_eq!(state(Ipv6Mode::Auto, &[ll.clone(), slaac.clone()]), Ipv6State::Slaac);
        assert_eq!(state(Ipv6Mode::Off, &[]), Ipv6State::Off);
        assert_eq!(state(Ipv6Mode::Auto, &[manual]), Ipv6State::Waiting, "an address put there by hand is not sessiond's doing");
        let leased = classify(&Addr6 { from_dhcpv6: true, ..kernel("2001:db8:1::1:5/128", false) }).unwrap();
        assert_eq!(leased.origin, Address6Origin::Dhcpv6);
        assert_eq!(state(Ipv6Mode::Auto, &[ll, slaac, leased]), Ipv6State::Dhcpv6);
    }
}
