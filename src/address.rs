//! Bitcoin address checks for the `pay_to` list: the right network, and a valid checksum.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Mainnet,
    Testnet,
    Testnet4,
    Signet,
    Regtest,
}

impl Network {
    pub fn parse(name: &str) -> Option<Network> {
        match name {
            "mainnet" | "bitcoin" => Some(Network::Mainnet),
            "testnet" => Some(Network::Testnet),
            "testnet4" => Some(Network::Testnet4),
            "signet" => Some(Network::Signet),
            "regtest" => Some(Network::Regtest),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }

    pub fn segwit_hrp(self) -> &'static str {
        match self {
            Network::Mainnet => "bc",
            Network::Testnet | Network::Testnet4 | Network::Signet => "tb",
            Network::Regtest => "bcrt",
        }
    }

    /// Base58check version bytes for P2PKH and P2SH; test networks share them.
    fn base58_versions(self) -> [u8; 2] {
        match self {
            Network::Mainnet => [0x00, 0x05],
            _ => [0x6f, 0xc4],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// Valid segwit encoding for another network.
    WrongSegwitNetwork { found: String, expected: &'static str },
    /// Valid base58check, but the version byte belongs to another network or type.
    WrongBase58Version { found: u8 },
    /// Neither valid bech32/bech32m segwit nor valid base58check.
    Malformed,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::WrongSegwitNetwork { found, expected } => {
                write!(f, "segwit address has prefix \"{found}\" but the network expects \"{expected}\"")
            }
            AddressError::WrongBase58Version { found } => {
                write!(f, "base58 address has version byte 0x{found:02x}, which is not P2PKH or P2SH on this network")
            }
            AddressError::Malformed => {
                f.write_str("not a valid address (bad bech32/bech32m or base58check checksum, length or characters)")
            }
        }
    }
}

/// Returns the address in the form explorers print it (bech32 lowercase), so that it can be
/// compared with `scriptpubkey_address` as a plain string.
pub fn normalise_address(address: &str, network: Network) -> Result<String, AddressError> {
    if let Ok((hrp, _version, _program)) = bech32::segwit::decode(address) {
        let expected = network.segwit_hrp();
        let found = hrp.to_lowercase();
        if found != expected {
            return Err(AddressError::WrongSegwitNetwork { found, expected });
        }
        // decode() already checked bech32 for v0 and bech32m for v1+, and program lengths.
        return Ok(address.to_ascii_lowercase());
    }
    let payload = bs58::decode(address).with_check(None).into_vec().map_err(|_| AddressError::Malformed)?;
    match payload.split_first() {
        Some((version, hash)) if hash.len() == 20 => {
            if network.base58_versions().contains(version) {
                Ok(address.to_string())
            } else {
                Err(AddressError::WrongBase58Version { found: *version })
            }
        }
        _ => Err(AddressError::Malformed),
    }
}

/// The scriptPubKey an output paying `address` carries: P2PKH `76a914{h160}88ac`, P2SH
/// `a914{h160}87`, segwit `{OP_0 | OP_1..OP_16}{len}{program}` (P2WPKH, P2WSH, P2TR, future
/// versions). The address is validated for `network` exactly as [`normalise_address`] does.
pub fn script_pubkey(address: &str, network: Network) -> Result<Vec<u8>, AddressError> {
    normalise_address(address, network)?;
    if let Ok((_hrp, version, program)) = bech32::segwit::decode(address) {
        let v = version.to_u8();
        let opcode = if v == 0 { 0x00 } else { 0x50u8.checked_add(v).ok_or(AddressError::Malformed)? };
        let len = u8::try_from(program.len()).map_err(|_| AddressError::Malformed)?;
        let mut script = vec![opcode, len];
        script.extend_from_slice(&program);
        return Ok(script);
    }
    let payload = bs58::decode(address).with_check(None).into_vec().map_err(|_| AddressError::Malformed)?;
    let [p2pkh, p2sh] = network.base58_versions();
    match payload.split_first() {
        Some((version, hash)) if *version == p2pkh => {
            let mut script = vec![0x76, 0xa9, 0x14];
            script.extend_from_slice(hash);
            script.extend_from_slice(&[0x88, 0xac]);
            Ok(script)
        }
        Some((version, hash)) if *version == p2sh => {
            let mut script = vec![0xa9, 0x14];
            script.extend_from_slice(hash);
            script.push(0x87);
            Ok(script)
        }
        _ => Err(AddressError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Addresses from BIP-173 / BIP-350 test vectors and well-known mainnet addresses.
    const MAIN_P2WPKH: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    const MAIN_P2TR: &str = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0";
    const TEST_P2WSH: &str = "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7";
    const REGTEST_P2WPKH: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    const MAIN_P2PKH: &str = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa";
    const MAIN_P2SH: &str = "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy";
    const TEST_P2PKH: &str = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";

    #[test]
    fn accepts_addresses_of_the_network() {
        assert_eq!(normalise_address(MAIN_P2WPKH, Network::Mainnet).unwrap(), MAIN_P2WPKH);
        assert_eq!(normalise_address(MAIN_P2TR, Network::Mainnet).unwrap(), MAIN_P2TR);
        assert_eq!(normalise_address(MAIN_P2PKH, Network::Mainnet).unwrap(), MAIN_P2PKH);
        assert_eq!(normalise_address(MAIN_P2SH, Network::Mainnet).unwrap(), MAIN_P2SH);
        // The normalised string is compared with what the explorer prints: the exact value matters.
        assert_eq!(normalise_address(TEST_P2WSH, Network::Testnet).unwrap(), TEST_P2WSH);
        assert_eq!(normalise_address(TEST_P2WSH, Network::Testnet4).unwrap(), TEST_P2WSH);
        assert_eq!(normalise_address(TEST_P2WSH, Network::Signet).unwrap(), TEST_P2WSH);
        assert_eq!(normalise_address(TEST_P2PKH, Network::Testnet).unwrap(), TEST_P2PKH);
        assert_eq!(normalise_address(TEST_P2PKH, Network::Regtest).unwrap(), TEST_P2PKH);
        assert_eq!(normalise_address(REGTEST_P2WPKH, Network::Regtest).unwrap(), REGTEST_P2WPKH);
        let upper = REGTEST_P2WPKH.to_ascii_uppercase();
        assert_eq!(normalise_address(&upper, Network::Regtest).unwrap(), REGTEST_P2WPKH);
    }

    #[test]
    fn uppercase_bech32_is_normalised() {
        let upper = MAIN_P2WPKH.to_ascii_uppercase();
        assert_eq!(normalise_address(&upper, Network::Mainnet).unwrap(), MAIN_P2WPKH);
    }

    #[test]
    fn refuses_other_networks() {
        assert!(matches!(
            normalise_address(MAIN_P2WPKH, Network::Regtest),
            Err(AddressError::WrongSegwitNetwork { .. })
        ));
        assert!(matches!(
            normalise_address(REGTEST_P2WPKH, Network::Mainnet),
            Err(AddressError::WrongSegwitNetwork { .. })
        ));
        assert_eq!(
            normalise_address(MAIN_P2PKH, Network::Regtest),
            Err(AddressError::WrongBase58Version { found: 0x00 })
        );
        assert_eq!(
            normalise_address(TEST_P2PKH, Network::Mainnet),
            Err(AddressError::WrongBase58Version { found: 0x6f })
        );
    }

    #[test]
    fn refuses_bad_checksums_and_encodings() {
        let cases = [
            "",
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", // bech32 checksum off by one char
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",         // base58check checksum
            // BIP-350: v1 program with a bech32 (not bech32m) checksum.
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
            "Bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", // mixed case
            "not an address",
        ];
        for case in cases {
            assert!(normalise_address(case, Network::Mainnet).is_err(), "accepted {case}");
        }
    }

    #[test]
    fn network_names() {
        for name in ["mainnet", "testnet", "testnet4", "signet", "regtest"] {
            assert_eq!(Network::parse(name).unwrap().name(), name);
        }
        assert_eq!(Network::parse("bitcoin"), Some(Network::Mainnet));
        assert_eq!(Network::parse("Mainnet"), None);
    }

    #[test]
    fn script_pubkeys_of_each_kind() {
        let hex_of = |a: &str, n: Network| hex::encode(script_pubkey(a, n).unwrap());
        // BIP-173 / BIP-350 vectors give the scriptPubKey of each segwit address.
        assert_eq!(hex_of(MAIN_P2WPKH, Network::Mainnet), "0014751e76e8199196d454941c45d1b3a323f1433bd6");
        assert_eq!(
            hex_of(TEST_P2WSH, Network::Testnet),
            "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"
        );
        assert_eq!(
            hex_of(MAIN_P2TR, Network::Mainnet),
            "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
        );
        // Genesis coinbase key's P2PKH address (1A1zP1...) hashes to 62e907b1...
        assert_eq!(hex_of(MAIN_P2PKH, Network::Mainnet), "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac");
        assert_eq!(hex_of(MAIN_P2SH, Network::Mainnet), "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87");
        assert_eq!(hex_of(REGTEST_P2WPKH, Network::Regtest), "0014751e76e8199196d454941c45d1b3a323f1433bd6");
        assert_eq!(hex_of(TEST_P2PKH, Network::Regtest)[..6].to_string(), "76a914");
        // The uppercase form pays the same script.
        assert_eq!(hex_of(&MAIN_P2WPKH.to_ascii_uppercase(), Network::Mainnet), hex_of(MAIN_P2WPKH, Network::Mainnet));
        assert!(script_pubkey(MAIN_P2WPKH, Network::Regtest).is_err());
        assert!(script_pubkey(MAIN_P2PKH, Network::Testnet).is_err());
        assert!(script_pubkey("not an address", Network::Mainnet).is_err());
    }

    #[test]
    fn base58_payloads_of_the_wrong_length_are_malformed() {
        for len in [19, 21] {
            let mut payload = vec![0x00];
            payload.extend(std::iter::repeat_n(7u8, len));
            let address = bs58::encode(payload).with_check().into_string();
            assert_eq!(normalise_address(&address, Network::Mainnet), Err(AddressError::Malformed), "{len}");
        }
    }

    #[test]
    fn errors_explain_themselves() {
        let err = normalise_address(MAIN_P2WPKH, Network::Regtest).unwrap_err();
        assert_eq!(err.to_string(), "segwit address has prefix \"bc\" but the network expects \"bcrt\"");
        let err = normalise_address(MAIN_P2PKH, Network::Regtest).unwrap_err();
        assert_eq!(err.to_string(), "base58 address has version byte 0x00, which is not P2PKH or P2SH on this network");
        assert!(AddressError::Malformed.to_string().starts_with("not a valid address"));
    }
}
