//! Session ids: the slot number that names a session's netns, MAC, address and loopback.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The largest sid whose loopback (127.0.0.0 + sid + 1) still fits in 127/8.
pub const MAX_SID: u32 = 16_777_214;

/// A valid session id: 1..=MAX_SID. sid 0 is the host's own loopback (127.0.0.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct Sid(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SidError {
    #[error("session id 0 is the host's own loopback, not a session (valid: 1..={MAX_SID})")]
    Zero,
    #[error("session id {0} is out of range (valid: 1..={MAX_SID})")]
    TooLarge(String),
    #[error("session id {0:?} is not a number (valid: 1..={MAX_SID})")]
    NotANumber(String),
    #[error("session id {0} is negative (valid: 1..={MAX_SID})")]
    Negative(String),
}

impl Sid {
    pub fn new(n: u64) -> Result<Sid, SidError> {
        match n {
            0 => Err(SidError::Zero),
            n if n > MAX_SID as u64 => Err(SidError::TooLarge(n.to_string())),
            n => Ok(Sid(n as u32)),
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
    /// The network namespace name under /run/netns.
    pub fn netns_name(self) -> String {
        format!("sessiond-{}", self.0)
    }
    /// Host-side name of the veth pair (IFNAMSIZ is 16 incl. NUL: "sdv16777214" fits).
    pub fn veth_host_name(self) -> String {
        format!("sdv{}", self.0)
    }
    /// Parses a netns name made by `netns_name`.
    pub fn from_netns_name(name: &str) -> Option<Sid> {
        let n = name.strip_prefix("sessiond-")?;
        if n.starts_with('0') || n.starts_with('+') {
            return None;
        }
        n.parse().ok()
    }
}

impl TryFrom<u64> for Sid {
    type Error = SidError;
    fn try_from(n: u64) -> Result<Sid, SidError> {
        Sid::new(n)
    }
}

impl From<Sid> for u32 {
    fn from(s: Sid) -> u32 {
        s.0
    }
}

impl FromStr for Sid {
    type Err = SidError;
    fn from_str(s: &str) -> Result<Sid, SidError> {
        let t = s.trim();
        if t.starts_with('-') && t[1..].chars().all(|c| c.is_ascii_digit()) && t.len() > 1 {
            return Err(SidError::Negative(t.to_string()));
        }
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
            return Err(SidError::NotANumber(s.to_string()));
        }
        match t.parse::<u64>() {
            Ok(n) => Sid::new(n),
            // All digits but does not fit in u64: certainly out of range.
            Err(_) => Err(SidError::TooLarge(t.to_string())),
        }
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_range_edges() {
        assert_eq!("1".parse::<Sid>().unwrap().get(), 1);
        assert_eq!("16777214".parse::<Sid>().unwrap().get(), MAX_SID);
        assert_eq!(" 7 ".parse::<Sid>().unwrap().get(), 7);
    }

    #[test]
    fn rejects_bad_input_with_named_reason() {
        assert_eq!("0".parse::<Sid>(), Err(SidError::Zero));
        assert_eq!("16777215".parse::<Sid>(), Err(SidError::TooLarge("16777215".into())));
        assert_eq!("-3".parse::<Sid>(), Err(SidError::Negative("-3".into())));
        assert!(matches!("abc".parse::<Sid>(), Err(SidError::NotANumber(_))));
        assert!(matches!("".parse::<Sid>(), Err(SidError::NotANumber(_))));
        assert!(matches!("1e3".parse::<Sid>(), Err(SidError::NotANumber(_))));
        assert_eq!("99999999999999999999999".parse::<Sid>(), Err(SidError::TooLarge("99999999999999999999999".into())));
        let msg = "0".parse::<Sid>().unwrap_err().to_string();
        assert!(msg.contains("session id 0"), "{msg}");
    }

    #[test]
    fn netns_name_round_trips() {
        let s = Sid::new(42).unwrap();
        assert_eq!(s.netns_name(), "sessiond-42");
        assert_eq!(Sid::from_netns_name("sessiond-42"), Some(s));
        assert_eq!(Sid::from_netns_name("sessiond-042"), None);
        assert_eq!(Sid::from_netns_name("sessiond-0"), None);
        assert_eq!(Sid::from_netns_name("other-1"), None);
        assert!(Sid::new(MAX_SID as u64).unwrap().veth_host_name().len() < 16);
    }

    #[test]
    fn serde_rejects_invalid_sid() {
        assert!(serde_json::from_str::<Sid>("0").is_err());
        assert!(serde_json::from_str::<Sid>("16777215").is_err());
        assert_eq!(serde_json::from_str::<Sid>("5").unwrap().get(), 5);
    }
}
