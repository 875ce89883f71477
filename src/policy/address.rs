//! Which client addresses may use a key: [`Cidr`] blocks, collected in [`AllowedIps`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use super::{PolicyError, truncated};

/// A block of IPv4 or IPv6 addresses, such as `203.0.113.0/24` or `2001:db8::/32`. A bare
/// address is a block of one (`/32` or `/128`). Bits after the prefix length are cleared, so
/// `203.0.113.7/24` is kept as `203.0.113.0/24`.
///
/// ```
/// use tower_api_key::policy::Cidr;
///
/// let block: Cidr = "203.0.113.7/24".parse()?;
/// assert_eq!(block.to_string(), "203.0.113.0/24");
/// assert!(block.contains("203.0.113.200".parse()?));
/// assert!(!block.contains("203.0.114.1".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    /// The block of addresses sharing `address`'s first `len` bits. A block of IPv4 addresses
    /// written as IPv6 (`::ffff:10.0.0.0/104`) is kept as the IPv4 block it is
    /// (`10.0.0.0/8`), since clients are matched by their IPv4 address.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidAddress`] if `len` is longer than the address (32 bits for IPv4,
    /// 128 for IPv6).
    pub fn new(address: IpAddr, len: u8) -> Result<Self, PolicyError> {
        if let IpAddr::V6(v6) = address
            && (96..=128).contains(&len)
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Self::new(IpAddr::V4(v4), len - 96);
        }
        let network = match address {
            IpAddr::V4(v4) if len <= 32 => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask_v4(len))),
            IpAddr::V6(v6) if len <= 128 => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask_v6(len)))
            }
            _ => return Err(PolicyError::InvalidAddress(format!("{address}/{len}"))),
        };
        Ok(Self { network, len })
    }

    /// The block's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// How many leading bits the block's addresses share.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `address` lies in the block. An IPv4 address written as IPv6
    /// (`::ffff:203.0.113.9`, as dual-stack sockets report IPv4 clients) counts as the
    /// IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                u32::from(address) & mask_v4(self.len) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                u128::from(address) & mask_v6(self.len) == u128::from(network)
            }
            _ => false,
        }
    }

    /// Whether every address of `other` lies in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.len <= other.len && self.contains(other.network)
    }
}

/// The first `len` (at most 32) bits set.
fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The first `len` (at most 128) bits set.
fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || PolicyError::InvalidAddress(truncated(text));
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => {
                // Digits only: `u8::from_str` would also take a sign.
                if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                (address, Some(len.parse::<u8>().map_err(|_| invalid())?))
            }
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let len = len.unwrap_or(if address.is_ipv4() { 32 } else { 128 });
        Self::new(address, len).map_err(|_| invalid())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The addresses a key may be used from: 1 to 32 [`Cidr`] blocks, kept sorted and without
/// duplicates. A key without an allowlist (`None`) may be used from anywhere.
///
/// The layer reads the client's address from the connection (see
/// [`ClientAddr`](crate::ClientAddr)); a request from outside every block is answered 403
/// `address not allowed`.
///
/// ```
/// use tower_api_key::policy::AllowedIps;
///
/// let allowed = AllowedIps::new(["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"])?;
/// assert!(allowed.contains("203.0.113.9".parse()?));
/// assert!(allowed.contains("2001:db8::1".parse()?));
/// assert!(allowed.contains("198.51.100.7".parse()?));
/// assert!(!allowed.contains("198.51.100.8".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AllowedIps(Arc<[Cidr]>);

impl AllowedIps {
    /// Most blocks one allowlist may hold.
    pub const MAX_ENTRIES: usize = 32;

    /// Parses and collects blocks; duplicates count once.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidAddress`] quoting the first entry that is not an address or a
    /// block, [`PolicyError::TooManyAddresses`] for more than 32 distinct blocks, or
    /// [`PolicyError::NoAddresses`] for none (clear the allowlist instead, so that a key
    /// isn't locked out by mistake).
    pub fn new<I, S>(entries: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut blocks = Vec::new();
        for entry in entries {
            blocks.push(entry.as_ref().parse::<Cidr>()?);
            // Early, so that a huge input is refused before it is all parsed.
            if blocks.len() > 4 * Self::MAX_ENTRIES {
                return Err(PolicyError::TooManyAddresses);
            }
        }
        Self::from_blocks(blocks)
    }

    /// Collects parsed blocks; see [`new`](Self::new) for the rules.
    ///
    /// # Errors
    ///
    /// [`PolicyError::TooManyAddresses`] or [`PolicyError::NoAddresses`].
    pub fn from_blocks(blocks: impl IntoIterator<Item = Cidr>) -> Result<Self, PolicyError> {
        let mut blocks: Vec<Cidr> = blocks.into_iter().collect();
        blocks.sort_unstable();
        blocks.dedup();
        match blocks.len() {
            0 => Err(PolicyError::NoAddresses),
            n if n > Self::MAX_ENTRIES => Err(PolicyError::TooManyAddresses),
            _ => Ok(Self(blocks.into())),
        }
    }

    /// Whether `address` lies in one of the blocks.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }

    /// Whether every block of `self` lies within a block of `other`: replacing `other` with
    /// `self` only takes addresses away. (A block covered only by several of `other`'s
    /// together counts as not within.)
    pub fn is_within(&self, other: &AllowedIps) -> bool {
        self.0
            .iter()
            .all(|block| other.0.iter().any(|outer| outer.covers(block)))
    }

    /// The blocks, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Cidr> + '_ {
        self.0.iter()
    }

    /// How many blocks the allowlist holds (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: an allowlist holds at least one block.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for AllowedIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn blocks_parse_with_or_without_a_length_and_clear_host_bits() {
        for (text, shown) in [
            ("203.0.113.0/24", "203.0.113.0/24"),
            ("203.0.113.77/24", "203.0.113.0/24"),
            ("198.51.100.7", "198.51.100.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
        ] {
            assert_eq!(
                text.parse::<Cidr>().map(|c| c.to_string()),
                Ok(shown.into())
            );
        }
        for bad in [
            "",
            "/24",
            "203.0.113.0/",
            "203.0.113.0/33",
            "2001:db8::/129",
            "203.0.113.0/+8",
            "203.0.113.0/-1",
            "203.0.113.0/024x",
            "1.2.3",
            "host.example",
            "1.2.3.4/8/8",
            " 1.2.3.4",
            "[::1]",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(PolicyError::InvalidAddress(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ipv4_blocks_written_as_ipv6_are_kept_as_ipv4() {
        for (text, shown) in [
            ("::ffff:127.0.0.1/128", "127.0.0.1/32"),
            ("::ffff:127.0.0.1", "127.0.0.1/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ] {
            assert_eq!(
                text.parse::<Cidr>().map(|c| c.to_string()),
                Ok(shown.into())
            );
        }
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().expect("valid");
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        // Narrowing compares the blocks they are: all of IPv4 is not within half of it.
        let everything = AllowedIps::new(["::ffff:0.0.0.0/96"]).expect("valid");
        let half = AllowedIps::new(["0.0.0.0/1"]).expect("valid");
        assert!(!everything.is_within(&half));
        assert!(half.is_within(&everything));
    }

    #[test]
    fn containment_follows_the_prefix_length_and_the_family() {
        let block: Cidr = "203.0.113.0/24".parse().expect("valid");
        assert!(block.contains(ip("203.0.113.0")));
        assert!(block.contains(ip("203.0.113.255")));
        assert!(!block.contains(ip("203.0.112.255")));
        assert!(!block.contains(ip("2001:db8::1")));
        // Dual-stack sockets report IPv4 clients as IPv4-mapped IPv6 addresses.
        assert!(block.contains(ip("::ffff:203.0.113.9")));
        let v6: Cidr = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("203.0.113.1")));
        let everything: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(everything.contains(ip("255.255.255.255")));
        let one: Cidr = "198.51.100.7".parse().expect("valid");
        assert!(one.contains(ip("198.51.100.7")));
        assert!(!one.contains(ip("198.51.100.6")));
    }

    #[test]
    fn allowlists_hold_one_to_thirty_two_distinct_blocks() {
        let many: Vec<String> = (0..32).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(AllowedIps::new(&many).map(|a| a.len()), Ok(32));
        let twice: Vec<&str> = many.iter().chain(&many).map(String::as_str).collect();
        assert_eq!(AllowedIps::new(twice).map(|a| a.len()), Ok(32));
        let mut too_many = many.clone();
        too_many.push("10.1.0.0/24".into());
        assert_eq!(
            AllowedIps::new(&too_many),
            Err(PolicyError::TooManyAddresses)
        );
        let huge: Vec<String> = (0..10_000)
            .map(|i| format!("10.{}.{}.1", i / 256, i % 256))
            .collect();
        assert_eq!(AllowedIps::new(&huge), Err(PolicyError::TooManyAddresses));
        assert_eq!(
            AllowedIps::new(Vec::<&str>::new()),
            Err(PolicyError::NoAddresses)
        );
        // The same block written two ways is one block.
        assert_eq!(
            AllowedIps::new(["10.0.0.1/8", "10.0.0.0/8"]).map(|a| a.len()),
            Ok(1)
        );
    }

    #[test]
    fn within_means_every_block_lies_inside_one_of_the_other() {
        let wide = AllowedIps::new(["10.0.0.0/8", "2001:db8::/32"]).expect("valid");
        let narrow = AllowedIps::new(["10.1.0.0/16", "10.2.3.4"]).expect("valid");
        assert!(narrow.is_within(&wide));
        assert!(wide.is_within(&wide));
        assert!(!wide.is_within(&narrow));
        let elsewhere = AllowedIps::new(["10.1.0.0/16", "192.0.2.1"]).expect("valid");
        assert!(!elsewhere.is_within(&wide));
    }
}
