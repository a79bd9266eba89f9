//! The loopback bridge's nftables table, `inet sessiond`, in the host namespace: one TPROXY rule
//! per protocol sends every TCP connection and UDP datagram that the host sends to a running
//! session's loopback (a member of the set `sessions`) to the daemon's transparent listeners on
//! 127.0.0.1, which see the original destination as their local address.
//!
//! ```text
//! table inet sessiond {
//!   set sessions { type ipv4_addr; }
//!   chain prerouting {
//!     type filter hook prerouting priority mangle; policy accept;
//!     iif "lo" ip daddr @sessions meta l4proto tcp tproxy ip to 127.0.0.1:TCP accept
//!     iif "lo" ip daddr @sessions meta l4proto udp tproxy ip to 127.0.0.1:UDP accept
//!   }
//! }
//! ```
//!
//! Only the loopbacks of running sessions are diverted: the rest of 127/8 stays the host's
//! (systemd-resolved's 127.0.0.53, Debian's 127.0.1.1). Nothing arriving on another interface
//! matches (the kernel drops 127/8 from the wire anyway: no route_localnet). TPROXY looks up an
//! established socket first, so replies to the host's own connections from a session loopback
//! (a host service's answer to the session -> host bridge) are delivered as usual.
//!
//! Built with the `nftables` crate's typed JSON and applied with `nft -j -f -`, one transaction
//! per change.
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::helper::NftablesError;
use nftables::schema::{Chain, Element, NfListObject, Nftables, Rule, Set, SetTypeValue, Table};
use nftables::stmt::{Match, Operator, Statement, TProxy};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use sessiond_client::ports::Proto;

pub const TABLE: &str = "sessiond";
pub const SET: &str = "sessions";
const CHAIN: &str = "prerouting";
/// The mangle priority: TPROXY's usual place, before conntrack's defragmented view matters.
const MANGLE: i32 = -150;

#[derive(Debug, thiserror::Error)]
#[error("nft ({what}): {detail}")]
pub struct NftError {
    what: &'static str,
    detail: String,
}

/// Where each protocol's diverted traffic goes: the transparent listeners' ports on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub tcp: u16,
    pub udp: u16,
}

fn table() -> Table<'static> {
    Table { family: NfFamily::INet, name: TABLE.into(), handle: None }
}

fn elements(addrs: &BTreeSet<Ipv4Addr>) -> Element<'static> {
    let elem: Vec<Expression> = addrs.iter().map(|a| Expression::String(a.to_string().into())).collect();
    Element { family: NfFamily::INet, table: TABLE.into(), name: SET.into(), elem: Cow::Owned(elem) }
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

fn tproxy_rule(proto: Proto, port: u16) -> Rule<'static> {
    let l4 = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let expr = vec![
        matches(Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Iif })), Expression::String("lo".into())),
        matches(
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField { protocol: "ip".into(), field: "daddr".into() }))),
            Expression::String(format!("@{SET}").into()),
        ),
        matches(Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::L4proto })), Expression::String(l4.into())),
        Statement::TProxy(TProxy { family: Some("ip".into()), port, addr: Some(Ipv4Addr::LOCALHOST.to_string().into()) }),
        Statement::Accept(None),
    ];
    Rule { family: NfFamily::INet, table: TABLE.into(), chain: CHAIN.into(), expr: Cow::Owned(expr), handle: None, index: None, comment: None }
}

/// The whole table, replacing whatever a previous daemon left (add, delete, add: idempotent,
/// in one transaction, so there is no moment without the table once it existed).
pub fn install(to: Listeners, sessions: &BTreeSet<Ipv4Addr>) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    b.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: SET.into(),
        set_type: SetTypeValue::Single(nftables::schema::SetType::Ipv4Addr),
        ..Default::default()
    })));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Prerouting),
        prio: Some(MANGLE),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }));
    b.add(NfListObject::Rule(tproxy_rule(Proto::Tcp, to.tcp)));
    b.add(NfListObject::Rule(tproxy_rule(Proto::Udp, to.udp)));
    if !sessions.is_empty() {
        b.add(NfListObject::Element(elements(sessions)));
    }
    b.to_nftables()
}

/// The change from the set's members `from` to `to`, or None when there is none.
pub fn update(from: &BTreeSet<Ipv4Addr>, to: &BTreeSet<Ipv4Addr>) -> Option<Nftables<'static>> {
    let gone: BTreeSet<Ipv4Addr> = from.difference(to).copied().collect();
    let new: BTreeSet<Ipv4Addr> = to.difference(from).copied().collect();
    if gone.is_empty() && new.is_empty() {
        return None;
    }
    let mut b = Batch::new();
    if !gone.is_empty() {
        b.delete(NfListObject::Element(elements(&gone)));
    }
    if !new.is_empty() {
        b.add(NfListObject::Element(elements(&new)));
    }
    Some(b.to_nftables())
}

/// Removes the table (absent is fine: it is added first, in the same transaction).
pub fn remove() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

/// Runs `nft -j -f -` with `batch`; nft's own message on failure.
pub async fn apply(what: &'static str, batch: &Nftables<'_>) -> Result<(), NftError> {
    nftables::helper::apply_ruleset_async(batch).await.map_err(|e| NftError {
        what,
        detail: match e {
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn commands(n: &Nftables) -> Vec<Value> {
        serde_json::to_value(n).unwrap()["nftables"].as_array().unwrap().clone()
    }

    fn set(addrs: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
        addrs.iter().map(|a| Ipv4Addr::from(*a)).collect()
    }

    #[test]
    fn install_replaces_the_table_and_diverts_both_protocols_to_loopback_listeners() {
        let c = commands(&install(Listeners { tcp: 40001, udp: 40002 }, &set(&[[127, 0, 0, 2], [127, 0, 0, 3]])));
        let verbs: Vec<String> = c.iter().map(|o| o.as_object().unwrap().keys().next().unwrap().clone()).collect();
        assert_eq!(verbs, ["add", "delete", "add", "add", "add", "add", "add", "add"]);
        assert_eq!(c[3]["add"]["set"]["type"], "ipv4_addr");
        assert_eq!(c[4]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(c[4]["add"]["chain"]["prio"], -150);
        for (i, proto, port) in [(5, "tcp", 40001), (6, "udp", 40002)] {
            let expr = &c[i]["add"]["rule"]["expr"];
            assert_eq!(expr[0]["match"]["right"], "lo");
            assert_eq!(expr[1]["match"]["left"], json!({"payload": {"protocol": "ip", "field": "daddr"}}));
            assert_eq!(expr[1]["match"]["right"], "@sessions");
            assert_eq!(expr[2]["match"]["right"], proto);
            assert_eq!(expr[3]["tproxy"], json!({"family": "ip", "addr": "127.0.0.1", "port": port}), "listeners stay on loopback");
        }
        assert_eq!(c[7]["add"]["element"]["elem"], json!(["127.0.0.2", "127.0.0.3"]));
        // no sessions yet: no empty element list (nft refuses one)
        assert_eq!(commands(&install(Listeners { tcp: 1, udp: 2 }, &BTreeSet::new())).len(), 7);
    }

    #[test]
    fn update_adds_and_deletes_only_the_difference() {
        let from = set(&[[127, 0, 0, 2], [127, 0, 0, 3]]);
        let to = set(&[[127, 0, 0, 3], [127, 0, 0, 9]]);
        let c = commands(&update(&from, &to).unwrap());
        assert_eq!(c[0]["delete"]["element"]["elem"], json!(["127.0.0.2"]));
        assert_eq!(c[1]["add"]["element"]["elem"], json!(["127.0.0.9"]));
        assert!(update(&to, &to).is_none());
        assert_eq!(commands(&update(&BTreeSet::new(), &to).unwrap()).len(), 1);
    }

    #[test]
    fn remove_is_idempotent() {
        let c = commands(&remove());
        assert!(c[0]["add"]["table"].is_object() && c[1]["delete"]["table"]["name"] == "sessiond");
    }
}
