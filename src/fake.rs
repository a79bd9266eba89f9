//! A recording fake of `Platform` for unit tests: logs every operation in order, keeps a model
//! of what exists (namespaces, links, addresses, files), and fails on demand.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use crate::mac::format_mac;
use crate::netlink::{Lifetimes, NetError, NetOps};
use crate::platform::Platform;

#[derive(Default)]
struct World {
    log: Vec<String>,
    fail: Vec<String>,
    objects: BTreeSet<String>,
    host_links: BTreeSet<String>,
    /// Namespace ids the host assigned, by id.
    ids: Vec<String>,
    /// Namespaces something outside the daemon keeps alive after they are unmounted.
    held_outside: BTreeSet<String>,
    /// MAC of each link, by its `link:NS/NAME` key.
    macs: std::collections::BTreeMap<String, [u8; 6]>,
    /// Neighbour entries by `NS/LINK/IP`.
    neighbours: std::collections::BTreeMap<String, crate::netlink::Neighbour>,
    /// MTU of each link by `NS/NAME`, once set (1500 until then).
    mtus: std::collections::BTreeMap<String, u32>,
    /// Other hosts on the LAN, by the address they hold: they answer ARP probes for it.
    lan_hosts: std::collections::BTreeMap<Ipv4Addr, [u8; 6]>,
    /// Every ARP socket made, by namespace.
    arp_sockets: Vec<FakeArp>,
    /// The parent of each macvlan made in the host namespace (the shim), by name.
    host_macvlan_parents: std::collections::BTreeMap<String, String>,
}

impl World {
    /// A link and the addresses on it.
    fn remove_link(&mut self, ns: &str, name: &str) {
        self.objects.remove(&format!("link:{ns}/{name}"));
        // its addresses, routes and neighbour entries go with it
        let on_it = [format!("addr:{ns}/{name}/"), format!("route:{ns}/{name}/"), format!("neigh:{ns}/{name}/")];
        self.objects.retain(|o| !on_it.iter().any(|p| o.starts_with(p.as_str())));
    }
}

#[derive(Clone)]
pub struct FakePlatform {
    world: Arc<Mutex<World>>,
    host: FakeNet,
}

#[derive(Clone)]
pub struct FakeNet {
    ns: String,
    world: Arc<Mutex<World>>,
}

impl FakePlatform {
    pub fn new() -> FakePlatform {
        let world = Arc::new(Mutex::new(World::default()));
        world.lock().unwrap().host_links.insert("br-lan".into());
        FakePlatform { host: FakeNet { ns: "host".into(), world: world.clone() }, world }
    }
    pub fn log(&self) -> Vec<String> {
        self.world.lock().unwrap().log.clone()
    }
    pub fn clear_log(&self) {
        self.world.lock().unwrap().log.clear();
    }
    /// Every later operation whose log line starts with `prefix` fails.
    pub fn fail_on(&self, prefix: &str) {
        self.world.lock().unwrap().fail.push(prefix.into());
    }
    pub fn objects(&self) -> BTreeSet<String> {
        self.world.lock().unwrap().objects.clone()
    }
    pub fn is_empty(&self) -> bool {
        self.world.lock().unwrap().objects.is_empty()
    }
    /// Deletes a host link as the kernel would: macvlans on it go with it.
    pub fn remove_host_link(&self, name: &str) {
        let mut w = self.world.lock().unwrap();
        w.host_links.remove(name);
        w.objects.retain(|o| !(o.starts_with("link:sessiond-") && o.ends_with("/eth0") && !o.contains("veth")));
        w.objects.retain(|o| !(o.starts_with("addr:sessiond-") && o.contains("/eth0/")));
        let children: Vec<String> = w.host_macvlan_parents.iter().filter(|(_, p)| *p == name).map(|(c, _)| c.clone()).collect();
        for c in children {
            w.remove_link("host", &c);
            w.host_links.remove(&c);
            w.host_macvlan_parents.remove(&c);
        }
    }
    /// Something outside the daemon (a process left in it) keeps the namespace alive.
    pub fn hold_outside(&self, netns: &str) {
        self.world.lock().unwrap().held_outside.insert(netns.into());
    }
    /// The kernel resolved `ip` on `netns`'s `name` to `mac` (as ARP would).
    pub fn learn_neighbour(&self, netns: &str, name: &str, ip: Ipv4Addr, mac: &[u8]) {
        let n = crate::netlink::Neighbour { mac: mac.to_vec(), resolved: true, reachable: true, pinned: false };
        self.world.lock().unwrap().neighbours.insert(format!("{netns}/{name}/{ip}"), n);
    }
    pub fn neighbour_entry(&self, netns: &str, name: &str, ip: Ipv4Addr) -> Option<crate::netlink::Neighbour> {
        self.world.lock().unwrap().neighbours.get(&format!("{netns}/{name}/{ip}")).cloned()
    }
    /// Another host on the LAN holds `ip` (answers probes for it with `mac`).
    pub fn add_lan_host(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.world.lock().unwrap().lan_hosts.insert(ip, mac);
    }
    /// `frame` arrives on `netns`'s interface (each of its ARP sockets gets it, filter permitting).
    pub fn arp_inject(&self, netns: &str, frame: &[u8]) {
        let socks: Vec<FakeArp> = self.world.lock().unwrap().arp_sockets.iter().filter(|s| s.ns == netns).cloned().collect();
        for s in socks {
            s.deliver(frame);
        }
    }
    pub fn add_host_link(&self, name: &str) {
        self.world.lock().unwrap().host_links.insert(name.into());
    }
}

impl Default for FakePlatform {
    fn default() -> Self {
        FakePlatform::new()
    }
}

/// Logs `line`, fails if asked to, else applies `f` to the world.
fn op<T>(world: &Mutex<World>, line: String, f: impl FnOnce(&mut World) -> Result<T, NetError>) -> Result<T, NetError> {
    let mut w = world.lock().unwrap();
    let fail = w.fail.iter().any(|p| line.starts_with(p.as_str()));
    w.log.push(line.clone());
    if fail {
        return Err(NetError::Other(format!("injected failure: {line}")));
    }
    f(&mut w)
}

impl std::fmt::Debug for FakeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FakeNet({})", self.ns)
    }
}

impl FakeNet {
    fn line(&self, s: String) -> String {
        format!("{}: {s}", self.ns)
    }
    fn link_key(&self, name: &str) -> String {
        format!("link:{}/{name}", self.ns)
    }
    fn has_link(&self, w: &World, name: &str) -> bool {
        if self.ns == "host" { w.host_links.contains(name) } else { name == "lo" || w.objects.contains(&self.link_key(name)) }
    }
}

impl NetOps for FakeNet {
    async fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let w = self.world.lock().unwrap();
        Ok(self.has_link(&w, name).then_some(1))
    }
    async fn link_is_up(&self, name: &str) -> Result<Option<bool>, NetError> {
        let w = self.world.lock().unwrap();
        Ok(self.has_link(&w, name).then_some(true))
    }
    async fn create_macvlan(&self, parent: &str, name: &str, mac: [u8; 6], target_ns: &str) -> Result<(), NetError> {
        op(&self.world, self.line(format!("macvlan {name} on {parent} mac {} in {target_ns}", format_mac(&mac))), |w| {
            if !w.host_links.contains(parent) {
                return Err(NetError::NoSuchLink(parent.into()));
            }
            if !w.objects.contains(&format!("netns:{target_ns}")) {
                return Err(NetError::Other(format!("no netns {target_ns}")));
            }
            w.objects.insert(format!("link:{target_ns}/{name}"));
            w.macs.insert(format!("link:{target_ns}/{name}"), mac);
            Ok(())
        })
    }
    async fn create_veth(&self, host: &str, bridge: &str, peer: &str, peer_mac: [u8; 6], target_ns: &str) -> Result<(), NetError> {
        op(&self.world, self.line(format!("veth {host} on bridge {bridge} peer {peer} mac {} in {target_ns}", format_mac(&peer_mac))), |w| {
            if !w.host_links.contains(bridge) {
                return Err(NetError::NoSuchLink(bridge.into()));
            }
            w.host_links.insert(host.into());
            w.objects.insert(format!("link:host/{host}"));
            w.objects.insert(format!("link:{target_ns}/{peer}"));
            Ok(())
        })
    }
    async fn set_up(&self, name: &str) -> Result<(), NetError> {
        let ok = {
            let w = self.world.lock().unwrap();
            self.has_link(&w, name)
        };
        op(&self.world, self.line(format!("up {name}")), |_| if ok { Ok(()) } else { Err(NetError::NoSuchLink(name.into())) })
    }
    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        let key = format!("{}/{name}", self.ns);
        op(&self.world, self.line(format!("mtu {name} {mtu}")), |w| {
            w.mtus.insert(key, mtu);
            Ok(())
        })
    }
    async fn link_mtu(&self, name: &str) -> Result<Option<u32>, NetError> {
        let w = self.world.lock().unwrap();
        Ok(self.has_link(&w, name).then(|| w.mtus.get(&format!("{}/{name}", self.ns)).copied().unwrap_or(1500)))
    }
    async fn add_addr(&self, name: &str, addr: Ipv4Net, host_scope: bool, life: Option<Lifetimes>) -> Result<(), NetError> {
        let scope = if host_scope { " scope host" } else { "" };
        let life = life.map(|l| format!(" valid {} preferred {}", l.valid_secs, l.preferred_secs)).unwrap_or_default();
        let key = format!("addr:{}/{name}/{addr}", self.ns);
        op(&self.world, self.line(format!("addr add {addr} dev {name}{scope}{life}")), |w| {
            // A namespace's lo goes with it; the host's (programs mode) stays.
            if name != "lo" || self.ns == "host" {
                w.objects.insert(key);
            }
            Ok(())
        })
    }
    async fn del_addr(&self, name: &str, addr: Ipv4Net) -> Result<(), NetError> {
        let key = format!("addr:{}/{name}/{addr}", self.ns);
        op(&self.world, self.line(format!("addr del {addr} dev {name}")), |w| {
            w.objects.remove(&key);
            Ok(())
        })
    }
    async fn addrs(&self, name: &str) -> Result<Vec<Ipv4Net>, NetError> {
        let prefix = format!("addr:{}/{name}/", self.ns);
        let w = self.world.lock().unwrap();
        Ok(w.objects.iter().filter_map(|o| o.strip_prefix(&prefix)?.parse().ok()).collect())
    }
    async fn addrs6(&self, _name: &str) -> Result<Vec<crate::netlink::Addr6>, NetError> {
        Ok(Vec::new()) // no router advertises on the fake LAN
    }
    async fn add_addr6(&self, name: &str, addr: std::net::Ipv6Addr, life: Lifetimes) -> Result<(), NetError> {
        op(&self.world, self.line(format!("addr add {addr}/128 dev {name} valid {} preferred {}", life.valid_secs, life.preferred_secs)), |_| Ok(()))
    }
    async fn del_addr6(&self, name: &str, addr: std::net::Ipv6Addr) -> Result<(), NetError> {
        op(&self.world, self.line(format!("addr del {addr}/128 dev {name}")), |_| Ok(()))
    }
    async fn ra_flags(&self, _name: &str) -> Result<Option<crate::netlink::RaFlags>, NetError> {
        Ok(None)
    }
    async fn add_route(&self, name: &str, dest: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        op(&self.world, self.line(format!("route {dest}{via} dev {name}")), |_| Ok(()))
    }
    async fn del_route(&self, name: &str, dest: Ipv4Net, _gateway: Option<Ipv4Addr>) -> Result<(), NetError> {
        let key = format!("route:{}/{name}/{dest}", self.ns);
        op(&self.world, self.line(format!("route del {dest} dev {name}")), |w| {
            w.objects.remove(&key);
            Ok(())
        })
    }
    async fn set_master(&self, name: &str, bridge: &str) -> Result<(), NetError> {
        op(&self.world, self.line(format!("master {name} {bridge}")), |_| Ok(()))
    }
    async fn peer_netns_id(&self, _netns_fd: std::os::fd::RawFd) -> Result<i32, NetError> {
        Err(NetError::Other("the fake platform has no namespace fds".into()))
    }
    async fn peer_link_mac(&self, nsid: i32, name: &str) -> Result<Option<Vec<u8>>, NetError> {
        let w = self.world.lock().unwrap();
        let Some(ns) = w.ids.get(nsid as usize) else { return Ok(None) };
        let key = format!("link:{ns}/{name}");
        Ok(w.objects.contains(&key).then(|| w.macs.get(&key).map(|m| m.to_vec()).unwrap_or_default()))
    }
    async fn del_peer_link(&self, nsid: i32, name: &str) -> Result<(), NetError> {
        op(&self.world, self.line(format!("link del {name} in nsid {nsid}")), |w| {
            if let Some(ns) = w.ids.get(nsid as usize).cloned() {
                w.remove_link(&ns, name);
            }
            Ok(())
        })
    }
    async fn neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<Option<crate::netlink::Neighbour>, NetError> {
        Ok(self.world.lock().unwrap().neighbours.get(&format!("{}/{name}/{ip}", self.ns)).cloned())
    }
    async fn pin_neighbour(&self, name: &str, ip: Ipv4Addr, mac: &[u8], reachable: bool) -> Result<(), NetError> {
        let key = format!("{}/{name}/{ip}", self.ns);
        let lladdr: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        op(&self.world, self.line(format!("neigh pin {ip} lladdr {} dev {name}", lladdr.join(":"))), |w| {
            w.neighbours.insert(key, crate::netlink::Neighbour { mac: mac.to_vec(), resolved: true, reachable, pinned: true });
            Ok(())
        })
    }
    async fn del_link(&self, name: &str) -> Result<(), NetError> {
        let ns = self.ns.clone();
        op(&self.world, self.line(format!("link del {name}")), |w| {
            w.remove_link(&ns, name);
            if ns == "host" {
                w.host_links.remove(name);
                // deleting one end of a veth deletes its peer
                if let Some(sid) = name.strip_prefix("sdv") {
                    let peer = format!("link:sessiond-{sid}/eth0");
                    w.objects.remove(&peer);
                }
            } else if let Some(sid) = ns.strip_prefix("sessiond-") {
                w.objects.remove(&format!("link:host/sdv{sid}"));
                w.host_links.remove(&format!("sdv{sid}"));
            }
            w.host_macvlan_parents.remove(name);
            Ok(())
        })
    }
    async fn create_shim(&self, parent: &str, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        let ns = self.ns.clone();
        op(&self.world, self.line(format!("shim {name} on {parent} mac {} noarp no-ipv6 up", format_mac(&mac))), |w| {
            if !w.host_links.contains(parent) {
                return Err(NetError::NoSuchLink(parent.into()));
            }
            if w.host_links.contains(name) {
                return Err(NetError::Other(format!("{name} exists")));
            }
            w.host_links.insert(name.into());
            w.host_macvlan_parents.insert(name.into(), parent.into());
            w.objects.insert(format!("link:{ns}/{name}"));
            w.macs.insert(format!("link:{ns}/{name}"), mac);
            Ok(())
        })
    }
    async fn add_route_from(&self, name: &str, dest: Ipv4Net, src: Ipv4Addr) -> Result<(), NetError> {
        let key = format!("route:{}/{name}/{dest}", self.ns);
        let exists = self.has_link(&self.world.lock().unwrap(), name);
        op(&self.world, self.line(format!("route {dest} dev {name} src {src}")), |w| {
            if !exists {
                return Err(NetError::NoSuchLink(name.into()));
            }
            w.objects.insert(key);
            Ok(())
        })
    }
    async fn set_static_neighbour(&self, name: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetError> {
        let key = format!("neigh:{}/{name}/{ip}", self.ns);
        let exists = self.has_link(&self.world.lock().unwrap(), name);
        op(&self.world, self.line(format!("neigh static {ip} lladdr {} dev {name}", format_mac(&mac))), |w| {
            if !exists {
                return Err(NetError::NoSuchLink(name.into()));
            }
            w.objects.insert(key);
            Ok(())
        })
    }
    async fn del_neighbour(&self, name: &str, ip: Ipv4Addr) -> Result<(), NetError> {
        let key = format!("neigh:{}/{name}/{ip}", self.ns);
        op(&self.world, self.line(format!("neigh del {ip} dev {name}")), |w| {
            w.objects.remove(&key);
            Ok(())
        })
    }
    async fn add_addr_without_prefix_route(&self, name: &str, addr: Ipv4Net, life: Option<Lifetimes>) -> Result<(), NetError> {
        let life = life.map(|l| format!(" valid {} preferred {}", l.valid_secs, l.preferred_secs)).unwrap_or_default();
        let key = format!("addr:{}/{name}/{addr}", self.ns);
        op(&self.world, self.line(format!("addr add {addr} dev {name} noprefixroute{life}")), |w| {
            w.objects.insert(key);
            Ok(())
        })
    }
    async fn add_table_route(&self, name: &str, table: u32, dest: Ipv4Net, gateway: Option<Ipv4Addr>, src: Ipv4Addr) -> Result<(), NetError> {
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let key = format!("route:{}/{name}/{table}/{dest}", self.ns);
        op(&self.world, self.line(format!("route {dest}{via} dev {name} src {src} table {table}")), |w| {
            w.objects.insert(key);
            Ok(())
        })
    }
    async fn del_table_route(&self, name: &str, table: u32, dest: Ipv4Net) -> Result<(), NetError> {
        let key = format!("route:{}/{name}/{table}/{dest}", self.ns);
        op(&self.world, self.line(format!("route del {dest} dev {name} table {table}")), |w| {
            w.objects.remove(&key);
            Ok(())
        })
    }
    async fn add_source_rule(&self, src: Ipv4Addr, table: u32, priority: u32) -> Result<(), NetError> {
        let key = format!("rule:{}/{priority}/{table}/{src}", self.ns);
        op(&self.world, self.line(format!("rule add from {src} lookup {table} pref {priority}")), |w| {
            w.objects.insert(key);
            Ok(())
        })
    }
    async fn del_table_rules(&self, table: u32, priority: u32, src: Option<Ipv4Addr>) -> Result<(), NetError> {
        let from = src.map(|a| format!(" from {a}")).unwrap_or_default();
        let prefix = format!("rule:{}/{priority}/{table}/", self.ns);
        op(&self.world, self.line(format!("rule del{from} lookup {table} pref {priority}")), |w| {
            w.objects.retain(|o| !(o.starts_with(&prefix) && src.is_none_or(|a| o.ends_with(&format!("/{a}")))));
            Ok(())
        })
    }
}

/// The MAC of every uplink on the fake host.
pub const FAKE_UPLINK_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];

/// An ARP socket on the fake LAN: probes for an address a LAN host holds are answered; what
/// `watch` names is the kernel filter's job, emulated. A LAN host with the prober's own MAC
/// (a clone) answers a macvlan session's probe to that MAC, which the clone's own macvlan
/// keeps: such an answer never arrives (see `acd`). A veth session's does, and so does the
/// answer to a probe from the uplink (`ns` "host").
#[derive(Clone)]
pub struct FakeArp {
    ns: String,
    world: Arc<Mutex<World>>,
    inbox: Arc<(Mutex<std::collections::VecDeque<Vec<u8>>>, tokio::sync::Notify)>,
    watching: Arc<Mutex<Option<Ipv4Addr>>>,
}

impl FakeArp {
    fn deliver(&self, frame: &[u8]) {
        let Some(p) = crate::acd::ArpPacket::parse_frame(frame) else { return };
        let Some(w) = *self.watching.lock().unwrap() else { return };
        if p.sender_ip == w || (p.is_probe() && p.target_ip == w) {
            self.inbox.0.lock().unwrap().push_back(frame.to_vec());
            self.inbox.1.notify_one();
        }
    }
}

impl crate::platform::ArpIo for FakeArp {
    fn watch(&self, address: Option<Ipv4Addr>) -> Result<(), NetError> {
        *self.watching.lock().unwrap() = address;
        Ok(())
    }
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use crate::acd::{ArpOp, ArpPacket};
        let p = ArpPacket::parse_frame(frame).ok_or_else(|| std::io::Error::other("not an ARP frame"))?;
        let kind = if p.is_probe() { "probe" } else { "announce" };
        let on_macvlan = |w: &World| w.macs.contains_key(&format!("link:{}/eth0", self.ns));
        let holder = op(&self.world, format!("{}: arp {kind} {}", self.ns, p.target_ip), |w| {
            Ok(w.lan_hosts.get(&p.target_ip).copied().filter(|mac| !(*mac == p.sender_mac && on_macvlan(w))))
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(mac) = holder.filter(|_| p.is_probe()) {
            let reply = ArpPacket { op: ArpOp::Reply, sender_mac: mac, sender_ip: p.target_ip, target_mac: p.sender_mac, target_ip: p.sender_ip };
            self.deliver(&reply.frame());
        }
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let notified = self.inbox.1.notified();
            if let Some(f) = self.inbox.0.lock().unwrap().pop_front() {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                return Ok(n);
            }
            notified.await;
        }
    }
}

impl Platform for FakePlatform {
    type Net = FakeNet;
    type Arp = FakeArp;
    async fn uplink_arp_socket(&self, uplink: &str) -> Result<(FakeArp, [u8; 6]), NetError> {
        if !self.world.lock().unwrap().host_links.contains(uplink) {
            return Err(NetError::NoSuchLink(uplink.into()));
        }
        let s = FakeArp { ns: "host".into(), world: self.world.clone(), inbox: Default::default(), watching: Default::default() };
        self.world.lock().unwrap().arp_sockets.push(s.clone());
        Ok((s, FAKE_UPLINK_MAC))
    }
    async fn arp_socket(&self, netns: &str) -> Result<FakeArp, NetError> {
        if !self.netns_exists(netns) {
            return Err(NetError::Other(format!("no netns {netns}")));
        }
        let s = FakeArp { ns: netns.into(), world: self.world.clone(), inbox: Default::default(), watching: Default::default() };
        self.world.lock().unwrap().arp_sockets.push(s.clone());
        Ok(s)
    }
    fn host(&self) -> &FakeNet {
        &self.host
    }
    async fn inside(&self, netns: &str) -> Result<FakeNet, NetError> {
        if !self.netns_exists(netns) {
            return Err(NetError::Other(format!("no netns {netns}")));
        }
        Ok(FakeNet { ns: netns.into(), world: self.world.clone() })
    }
    async fn create_netns(&self, name: &str, sysctls: &[(&str, &str)]) -> Result<(), NetError> {
        op(&self.world, format!("netns add {name}"), |w| {
            w.objects.insert(format!("netns:{name}"));
            Ok(())
        })?;
        for (k, v) in sysctls {
            self.set_sysctl(name, k, v)?;
        }
        Ok(())
    }
    fn delete_netns(&self, name: &str) -> Result<(), NetError> {
        op(&self.world, format!("netns del {name}"), |w| {
            w.objects.remove(&format!("netns:{name}"));
            if w.held_outside.contains(name) {
                return Ok(()); // unmounted, but alive with what is in it
            }
            // links and addresses inside die with the namespace, and so does its id
            let inside = format!(":{name}/");
            w.objects.retain(|o| !o.contains(&inside));
            for id in w.ids.iter_mut().filter(|n| *n == name) {
                id.clear();
            }
            Ok(())
        })
    }
    async fn netns_id(&self, name: &str) -> Result<i32, NetError> {
        op(&self.world, format!("netns id {name}"), |w| {
            if let Some(i) = w.ids.iter().position(|n| n == name) {
                return Ok(i as i32);
            }
            w.ids.push(name.into());
            Ok(w.ids.len() as i32 - 1)
        })
    }
    fn netns_exists(&self, name: &str) -> bool {
        self.world.lock().unwrap().objects.contains(&format!("netns:{name}"))
    }
    fn list_netns(&self) -> Vec<String> {
        self.world.lock().unwrap().objects.iter().filter_map(|o| o.strip_prefix("netns:").map(String::from)).collect()
    }
    fn write_netns_file(&self, netns: &str, file: &str, _contents: &str) -> Result<(), NetError> {
        op(&self.world, format!("write {netns}/{file}"), |w| {
            w.objects.insert(format!("files:{netns}"));
            Ok(())
        })
    }
    async fn dhcp_socket(&self, netns: &str, _mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
        Err(NetError::Other(format!("the fake platform has no sockets ({netns})")))
    }
    async fn host_dhcp_socket(&self, link: &str, _mac: [u8; 6]) -> Result<tokio::net::UdpSocket, NetError> {
        Err(NetError::Other(format!("the fake platform has no sockets ({link})")))
    }
    async fn dhcp6_socket(&self, netns: &str) -> Result<tokio::net::UdpSocket, NetError> {
        Err(NetError::Other(format!("the fake platform has no sockets ({netns})")))
    }
    fn set_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), NetError> {
        op(&self.world, format!("{netns}: sysctl {key}={value}"), |_| Ok(()))
    }
    fn hold_netns(&self, _name: &str) -> Option<std::fs::File> {
        None
    }
    fn file_writer(&self) -> crate::platform::FileWriter {
        let p = self.clone();
        std::sync::Arc::new(move |netns: &str, file: &str, contents: &str| p.write_netns_file(netns, file, contents))
    }
    fn ipv6_names_writer(&self) -> crate::platform::Ipv6NamesWriter {
        let p = self.clone();
        std::sync::Arc::new(move |netns: &str, names: crate::files::Ipv6Names| op(&p.world, format!("ipv6 names {netns}: {names:?}"), |_| Ok(())))
    }
    fn list_netns_files(&self) -> Vec<String> {
        self.world.lock().unwrap().objects.iter().filter_map(|o| o.strip_prefix("files:").map(String::from)).collect()
    }
    fn remove_netns_files(&self, netns: &str) -> Result<(), NetError> {
        op(&self.world, format!("rm {netns} files"), |w| {
            w.objects.remove(&format!("files:{netns}"));
            Ok(())
        })
    }
}
