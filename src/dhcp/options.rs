//! Strict reading of the received options area.
//!
//! dhcproto's option-list decoder silently stops at the first option it cannot
//! decode (dropping every option after it) and is lenient about option 121, so
//! received options are walked here as raw TLVs (concatenating repeats per
//! RFC 3396) and each option the client uses is decoded with exact length checks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder, v4};
use ipnet::Ipv4Net;

use super::reject::RejectReason;

pub(crate) const SUBNET_MASK: u8 = 1;
pub(crate) const ROUTER: u8 = 3;
pub(crate) const DNS: u8 = 6;
pub(crate) const DOMAIN_NAME: u8 = 15;
pub(crate) const MTU: u8 = 26;
pub(crate) const BROADCAST: u8 = 28;
pub(crate) const LEASE_TIME: u8 = 51;
pub(crate) const MESSAGE_TYPE: u8 = 53;
pub(crate) const SERVER_ID: u8 = 54;
pub(crate) const RENEWAL: u8 = 58;
pub(crate) const REBINDING: u8 = 59;
pub(crate) const DOMAIN_SEARCH: u8 = 119;
pub(crate) const CLASSLESS_ROUTES: u8 = 121;

/// Option code -> concatenated payload of every occurrence.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawOptions(BTreeMap<u8, Vec<u8>>);

impl RawOptions {
    /// Walks `area` (the bytes after the magic cookie). A missing END is tolerated
    /// when the last option ends exactly at the end of the packet.
    pub(crate) fn scan(area: &[u8], base_offset: usize) -> Result<Self, RejectReason> {
        let mut map: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut i = 0;
        while i < area.len() {
            match area[i] {
                0 => i += 1,
                255 => break,
                code => {
                    let malformed = RejectReason::MalformedOptions { offset: base_offset + i };
                    let len = *area.get(i + 1).ok_or(malformed.clone())? as usize;
                    let data = area.get(i + 2..i + 2 + len).ok_or(malformed)?;
                    map.entry(code).or_default().extend_from_slice(data);
                    i += 2 + len;
                }
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    pub(crate) fn u8(&self, code: u8) -> Result<Option<u8>, RejectReason> {
        self.fixed::<1>(code).map(|o| o.map(|b| b[0]))
    }

    pub(crate) fn u16(&self, code: u8) -> Result<Option<u16>, RejectReason> {
        self.fixed::<2>(code).map(|o| o.map(u16::from_be_bytes))
    }

    pub(crate) fn u32(&self, code: u8) -> Result<Option<u32>, RejectReason> {
        self.fixed::<4>(code).map(|o| o.map(u32::from_be_bytes))
    }

    pub(crate) fn ipv4(&self, code: u8) -> Result<Option<Ipv4Addr>, RejectReason> {
        self.fixed::<4>(code).map(|o| o.map(Ipv4Addr::from))
    }

    /// Non-empty list of addresses (options 3, 6).
    pub(crate) fn ipv4_list(&self, code: u8) -> Result<Vec<Ipv4Addr>, RejectReason> {
        let Some(data) = self.get(code) else { return Ok(Vec::new()) };
        if data.is_empty() || data.len() % 4 != 0 {
            return Err(RejectReason::MalformedOption { code, why: "length is not a positive multiple of 4" });
        }
        Ok(data.chunks_exact(4).map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3])).collect())
    }

    /// UTF-8 string; trailing NULs (sent by some servers) are dropped.
    pub(crate) fn string(&self, code: u8) -> Result<Option<String>, RejectReason> {
        let Some(data) = self.get(code) else { return Ok(None) };
        let s = std::str::from_utf8(data).map_err(|_| RejectReason::MalformedOption { code, why: "not valid UTF-8" })?.trim_end_matches('\0');
        Ok((!s.is_empty()).then(|| s.to_owned()))
    }

    fn fixed<const N: usize>(&self, code: u8) -> Result<Option<[u8; N]>, RejectReason> {
        match self.get(code) {
            None => Ok(None),
            Some(d) => <[u8; N]>::try_from(d).map(Some).map_err(|_| RejectReason::MalformedOption { code, why: "wrong length" }),
        }
    }
}

/// Netmask -> prefix length; `None` if not contiguous or zero.
pub(crate) fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (ones > 0 && m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// RFC 3442 option 121. Strict: every entry must be complete and widths ≤ 32.
/// Stray host bits in a destination are masked off rather than rejected.
pub(crate) fn classless_routes(data: &[u8]) -> Result<Vec<(Ipv4Net, Ipv4Addr)>, RejectReason> {
    use RejectReason::MalformedClasslessRoutes as Bad;
    if data.is_empty() {
        return Err(Bad("empty"));
    }
    let mut routes = Vec::new();
    let mut rest = data;
    while let Some((&width, tail)) = rest.split_first() {
        if width > 32 {
            return Err(Bad("prefix length > 32"));
        }
        let sig = (width as usize).div_ceil(8);
        if tail.len() < sig + 4 {
            return Err(Bad("truncated route"));
        }
        let mut dest = [0u8; 4];
        dest[..sig].copy_from_slice(&tail[..sig]);
        let gw = Ipv4Addr::new(tail[sig], tail[sig + 1], tail[sig + 2], tail[sig + 3]);
        let net = Ipv4Net::new(Ipv4Addr::from(dest), width).map_err(|_| Bad("prefix length > 32"))?;
        routes.push((net.trunc(), gw));
        rest = &tail[sig + 4..];
    }
    Ok(routes)
}

/// RFC 3397 option 119 via dhcproto (DNS name compression). Lenient: names that
/// fail to decode end the list, since search domains are not needed to connect.
pub(crate) fn domain_search(data: &[u8]) -> Vec<String> {
    let mut buf = Vec::with_capacity(data.len() + data.len() / 255 * 2 + 3);
    for chunk in data.chunks(255) {
        buf.push(DOMAIN_SEARCH);
        buf.push(chunk.len() as u8);
        buf.extend_from_slice(chunk);
    }
    buf.push(255);
    match v4::DhcpOption::decode(&mut Decoder::new(&buf)) {
        Ok(v4::DhcpOption::DomainSearch(names)) => names.iter().map(|n| n.to_string().trim_end_matches('.').to_owned()).filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_concatenates_and_tolerates_missing_end() {
        let o = RawOptions::scan(&[0, 3, 2, 10, 0, 6, 0, 3, 2, 0, 1], 240).unwrap();
        assert_eq!(o.get(3), Some(&[10, 0, 0, 1][..]));
        assert_eq!(o.get(6), Some(&[][..]));
        assert!(o.get(4).is_none());
    }

    #[test]
    fn scan_rejects_overrun() {
        assert_eq!(RawOptions::scan(&[53, 1, 2, 3, 9, 1], 240).unwrap_err(), RejectReason::MalformedOptions { offset: 243 });
        assert_eq!(RawOptions::scan(&[53], 240).unwrap_err(), RejectReason::MalformedOptions { offset: 240 });
    }

    #[test]
    fn fixed_lengths_are_enforced() {
        let o = RawOptions::scan(&[51, 3, 0, 0, 1, 26, 2, 5, 220, 255], 240).unwrap();
        assert!(matches!(o.u32(51), Err(RejectReason::MalformedOption { code: 51, .. })));
        assert_eq!(o.u16(26).unwrap(), Some(1500));
        assert_eq!(o.u32(58).unwrap(), None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(128, 0, 0, 0)), Some(1));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), None);
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 255, 255, 255)), None);
    }

    #[test]
    fn rfc3442_examples() {
        // 0/0 via 10.0.0.1, 10/8 via 10.0.0.2, 192.168.1.0/24 via 0.0.0.0 (on-link),
        // 10.17.0.0/16 with a stray host bit masked off.
        let data = [
            0, 10, 0, 0, 1, //
            8, 10, 10, 0, 0, 2, //
            24, 192, 168, 1, 0, 0, 0, 0, //
            16, 10, 17, 10, 0, 0, 3,
        ];
        let r = classless_routes(&data).unwrap();
        assert_eq!(
            r,
            vec![
                ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1)),
                ("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 2)),
                ("192.168.1.0/24".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
                ("10.17.0.0/16".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 3)),
            ]
        );
        // Host bits: 10.17.10.x/16 -> 10.17.0.0/16 (tested above by width 16 with 2 bytes).
        let r = classless_routes(&[9, 10, 255, 1, 2, 3, 4]).unwrap();
        assert_eq!(r[0].0, "10.128.0.0/9".parse().unwrap());
    }

    #[test]
    fn rfc3442_malformed() {
        assert!(classless_routes(&[]).is_err());
        assert!(classless_routes(&[33, 1, 2, 3, 4, 5, 6, 7, 8]).is_err());
        assert!(classless_routes(&[24, 192, 168, 1, 10, 0, 0]).is_err());
        assert!(classless_routes(&[0, 10, 0, 0, 1, 8]).is_err());
    }

    #[test]
    fn search_list_with_compression() {
        // "eng.example.com", then "example.com" as a pointer to offset 4.
        let data = [
            3, b'e', b'n', b'g', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
            0xC0, 4,
        ];
        assert_eq!(domain_search(&data), vec!["eng.example.com".to_string(), "example.com".into()]);
        assert!(domain_search(&[0xC0, 0]).is_empty());
        assert!(domain_search(&[]).is_empty());
    }
}
