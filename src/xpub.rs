//! An address of its own for every client: BIP32 public derivation from the merchant's extended
//! public key, with BIP84 (P2WPKH) or BIP86 (P2TR) script rules, at an index taken from a hash of
//! the client's identity. A payment to one client's address counts for that client only, so a
//! txid read off the chain is worth nothing to anyone else.
//!
//! Path below the configured key: `<branch>/<hi>/<lo>`, where `hi` and `lo` are the two 31-bit
//! halves of `index_of(identity)` (non-hardened, so the filter derives them from public data and
//! the merchant's wallet finds them with a descriptor such as `wpkh(xpub…/0/hi/lo)`).

use std::fmt;
use std::ops::{Add, Neg};

use hmac::{Hmac, Mac};
use k256::elliptic_curve::group::prime::PrimeCurveAffine;
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use ripemd::Ripemd160;
use sha2::{Digest, Sha256, Sha512};

use crate::address::Network;

/// Which output script a derived key pays to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// BIP84: witness v0 key hash (bech32).
    P2wpkh,
    /// BIP86: witness v1 key-path-only taproot output (bech32m).
    P2tr,
}

impl ScriptKind {
    pub fn parse(text: &str) -> Option<ScriptKind> {
        match text {
            "p2wpkh" => Some(ScriptKind::P2wpkh),
            "p2tr" => Some(ScriptKind::P2tr),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScriptKind::P2wpkh => "p2wpkh",
            ScriptKind::P2tr => "p2tr",
        }
    }

    /// The output descriptor function a wallet imports for this script.
    pub fn descriptor(self) -> &'static str {
        match self {
            ScriptKind::P2wpkh => "wpkh",
            ScriptKind::P2tr => "tr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XpubError {
    Base58,
    Length(usize),
    Version {
        found: [u8; 4],
        network: &'static str,
    },
    ScriptForVersion {
        prefix: &'static str,
    },
    NotAPublicKey,
    /// One of the 2^-127 indexes with no child key (BIP32): never reached in practice.
    NoChild,
}

impl fmt::Display for XpubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XpubError::Base58 => f.write_str("not valid base58check"),
            XpubError::Length(n) => write!(f, "decodes to {n} bytes, an extended key has 78"),
            XpubError::Version { found, network } => write!(
                f,
                "version bytes {} are not those of a public extended key for {network} (xpub/zpub on mainnet, tpub/vpub on test networks)",
                hex::encode(found)
            ),
            XpubError::ScriptForVersion { prefix } => {
                write!(f, "a {prefix} key is for p2wpkh (BIP84); use an xpub or tpub for p2tr")
            }
            XpubError::NotAPublicKey => f.write_str("does not hold a valid compressed secp256k1 public key"),
            XpubError::NoChild => f.write_str("this index has no child key"),
        }
    }
}

/// A public extended key: what derivation needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedPublicKey {
    pub chain_code: [u8; 32],
    /// Compressed SEC1 point.
    pub public_key: [u8; 33],
}

const XPUB: [u8; 4] = [0x04, 0x88, 0xb2, 0x1e];
const ZPUB: [u8; 4] = [0x04, 0xb2, 0x47, 0x46];
const TPUB: [u8; 4] = [0x04, 0x35, 0x87, 0xcf];
const VPUB: [u8; 4] = [0x04, 0x5f, 0x1c, 0xf6];

impl ExtendedPublicKey {
    /// Parses `xpub…`/`zpub…` (mainnet) or `tpub…`/`vpub…` (test networks) and checks that the
    /// version fits the network and the script (`zpub`/`vpub` are BIP84 keys).
    pub fn parse(text: &str, network: Network, script: ScriptKind) -> Result<ExtendedPublicKey, XpubError> {
        let raw = bs58::decode(text).with_check(None).into_vec().map_err(|_| XpubError::Base58)?;
        let raw: [u8; 78] = raw.as_slice().try_into().map_err(|_| XpubError::Length(raw.len()))?;
        let (version, rest) = raw.split_at(4);
        let version: [u8; 4] = version.try_into().map_err(|_| XpubError::Length(78))?;
        let (allowed, name) = match network {
            Network::Mainnet => ([XPUB, ZPUB], "mainnet"),
            _ => ([TPUB, VPUB], "test networks"),
        };
        if !allowed.contains(&version) {
            return Err(XpubError::Version { found: version, network: name });
        }
        if script == ScriptKind::P2tr && (version == ZPUB || version == VPUB) {
            return Err(XpubError::ScriptForVersion { prefix: if version == ZPUB { "zpub" } else { "vpub" } });
        }
        // depth (1), parent fingerprint (4), child number (4), chain code (32), key (33)
        let chain_code: [u8; 32] = rest.get(9..41).and_then(|s| s.try_into().ok()).ok_or(XpubError::Length(78))?;
        let public_key: [u8; 33] = rest.get(41..74).and_then(|s| s.try_into().ok()).ok_or(XpubError::Length(78))?;
        point(&public_key).ok_or(XpubError::NotAPublicKey)?;
        Ok(ExtendedPublicKey { chain_code, public_key })
    }

    /// CKDpub (BIP32) for a non-hardened `index` (below 2^31).
    pub fn child(&self, index: u32) -> Result<ExtendedPublicKey, XpubError> {
        if index >= 0x8000_0000 {
            return Err(XpubError::NoChild);
        }
        let mut mac = Hmac::<Sha512>::new_from_slice(&self.chain_code).map_err(|_| XpubError::NoChild)?;
        mac.update(&self.public_key);
        mac.update(&index.to_be_bytes());
        let i = mac.finalize().into_bytes();
        let (il, ir) = i.split_at(32);
        let il: [u8; 32] = il.try_into().map_err(|_| XpubError::NoChild)?;
        let tweak: Option<Scalar> = Scalar::from_repr(FieldBytes::from(il)).into();
        let tweak = tweak.ok_or(XpubError::NoChild)?;
        let parent = point(&self.public_key).ok_or(XpubError::NotAPublicKey)?;
        // Group operations modulo the curve order: nothing here can overflow or panic.
        let child =
            std::ops::Mul::mul(ProjectivePoint::GENERATOR, &tweak).add(&ProjectivePoint::from(parent)).to_affine();
        if bool::from(child.is_identity()) {
            return Err(XpubError::NoChild);
        }
        let public_key: [u8; 33] =
            child.to_encoded_point(true).as_bytes().try_into().map_err(|_| XpubError::NotAPublicKey)?;
        let chain_code: [u8; 32] = ir.try_into().map_err(|_| XpubError::NoChild)?;
        Ok(ExtendedPublicKey { chain_code, public_key })
    }

    pub fn derive(&self, path: &[u32]) -> Result<ExtendedPublicKey, XpubError> {
        path.iter().try_fold(*self, |key, index| key.child(*index))
    }
}

fn point(sec1: &[u8; 33]) -> Option<AffinePoint> {
    let encoded = EncodedPoint::from_bytes(sec1).ok()?;
    Option::from(AffinePoint::from_encoded_point(&encoded))
}

/// The witness program of `key` for `script`: HASH160 of the key (P2WPKH), or the BIP86-tweaked
/// x-only output key (P2TR, no script tree).
pub fn witness_program(key: &[u8; 33], script: ScriptKind) -> Result<Vec<u8>, XpubError> {
    match script {
        ScriptKind::P2wpkh => Ok(Ripemd160::digest(Sha256::digest(key)).to_vec()),
        ScriptKind::P2tr => {
            let internal = point(key).ok_or(XpubError::NotAPublicKey)?;
            // BIP340 keys are x-only with an even y: negate an odd one.
            let internal = if bool::from(internal.y_is_odd()) { internal.neg() } else { internal };
            let x = internal.x();
            let tag = Sha256::digest(b"TapTweak");
            let t = Sha256::new().chain_update(tag).chain_update(tag).chain_update(x).finalize();
            let tweak = <Scalar as Reduce<U256>>::reduce_bytes(&t);
            let output = ProjectivePoint::from(internal)
                .add(&std::ops::Mul::mul(ProjectivePoint::GENERATOR, &tweak))
                .to_affine();
            Ok(output.x().to_vec())
        }
    }
}

/// The address of `key` for `script` on `network`, lowercase as explorers print it.
pub fn address(key: &[u8; 33], script: ScriptKind, network: Network) -> Result<String, XpubError> {
    let program = witness_program(key, script)?;
    let hrp = bech32::Hrp::parse(network.segwit_hrp()).map_err(|_| XpubError::NotAPublicKey)?;
    let version = match script {
        ScriptKind::P2wpkh => bech32::Fe32::Q,
        ScriptKind::P2tr => bech32::Fe32::P,
    };
    bech32::segwit::encode(hrp, version, &program).map_err(|_| XpubError::NotAPublicKey)
}

/// The derivation index of an identity: the first 62 bits of SHA-256("txgate/identity\0" ||
/// source || 0x00 || value), as two 31-bit halves (hi, lo). Documented and stable: the merchant's
/// `txgate-admin` computes the same.
pub fn index_of(source: &str, value: &[u8]) -> (u32, u32) {
    let digest = Sha256::new()
        .chain_update(b"txgate/identity\0")
        .chain_update(source.as_bytes())
        .chain_update([0u8])
        .chain_update(value)
        .finalize();
    let word = |at: usize| {
        let bytes: [u8; 4] = digest.get(at..at.saturating_add(4)).and_then(|s| s.try_into().ok()).unwrap_or([0; 4]);
        u32::from_be_bytes(bytes) & 0x7fff_ffff
    };
    (word(0), word(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    // BIP32 test vector 1, chain m/0H (public): xpub and its public children are cross-checked
    // against the vector's listed non-hardened steps.
    // Vector 1, m/0H/1: parent for the non-hardened step m/0H/1/2H is not usable publicly, so the
    // public check uses m/0H -> m/0H/1 (non-hardened index 1).
    const V1_M_0H: &str = "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw";
    const V1_M_0H_1: &str = "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ";

    fn decode(text: &str) -> ExtendedPublicKey {
        ExtendedPublicKey::parse(text, Network::Mainnet, ScriptKind::P2wpkh).unwrap()
    }

    #[test]
    fn bip32_vector_1_public_derivation() {
        assert_eq!(decode(V1_M_0H).child(1).unwrap(), decode(V1_M_0H_1));
    }

    // BIP32 test vector 2: m (xpub) -> m/0 (non-hardened, derivable from the public key alone).
    const V2_M: &str = "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB";
    const V2_M_0: &str = "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH";

    #[test]
    fn bip32_vector_2_public_derivation() {
        assert_eq!(decode(V2_M).child(0).unwrap(), decode(V2_M_0));
    }

    // BIP-84 "Test vectors" (bitcoin/bips bip-0084.mediawiki): mnemonic "abandon … about", account 0.
    const BIP84_ZPUB: &str = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs";

    #[test]
    fn bip84_vector_first_receive_addresses() {
        let account = ExtendedPublicKey::parse(BIP84_ZPUB, Network::Mainnet, ScriptKind::P2wpkh).unwrap();
        let key = |path: &[u32]| account.derive(path).unwrap().public_key;
        assert_eq!(
            address(&key(&[0, 0]), ScriptKind::P2wpkh, Network::Mainnet).unwrap(),
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        assert_eq!(
            address(&key(&[0, 1]), ScriptKind::P2wpkh, Network::Mainnet).unwrap(),
            "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
        );
        assert_eq!(
            address(&key(&[1, 0]), ScriptKind::P2wpkh, Network::Mainnet).unwrap(),
            "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"
        );
    }

    // BIP-86 "Test vectors" (bitcoin/bips bip-0086.mediawiki): the same mnemonic, account 0.
    const BIP86_XPUB: &str = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";

    #[test]
    fn bip86_vector_first_receive_addresses() {
        let account = ExtendedPublicKey::parse(BIP86_XPUB, Network::Mainnet, ScriptKind::P2tr).unwrap();
        let key = |path: &[u32]| account.derive(path).unwrap().public_key;
        assert_eq!(
            address(&key(&[0, 0]), ScriptKind::P2tr, Network::Mainnet).unwrap(),
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
        assert_eq!(
            address(&key(&[0, 1]), ScriptKind::P2tr, Network::Mainnet).unwrap(),
            "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"
        );
        assert_eq!(
            address(&key(&[1, 0]), ScriptKind::P2tr, Network::Mainnet).unwrap(),
            "bc1p3qkhfews2uk44qtvauqyr2ttdsw7svhkl9nkm9s9c3x4ax5h60wqwruhk7"
        );
    }

    #[test]
    fn keys_are_refused_for_the_wrong_network_or_script() {
        assert!(matches!(
            ExtendedPublicKey::parse(BIP84_ZPUB, Network::Regtest, ScriptKind::P2wpkh),
            Err(XpubError::Version { .. })
        ));
        assert!(matches!(
            ExtendedPublicKey::parse(BIP84_ZPUB, Network::Mainnet, ScriptKind::P2tr),
            Err(XpubError::ScriptForVersion { .. })
        ));
        assert_eq!(
            ExtendedPublicKey::parse("xpubnotbase58", Network::Mainnet, ScriptKind::P2tr),
            Err(XpubError::Base58)
        );
        let mut raw = bs58::decode(V2_M).with_check(None).into_vec().unwrap();
        raw[45] ^= 0xff; // break the public key
        let broken = bs58::encode(raw).with_check().into_string();
        assert_eq!(
            ExtendedPublicKey::parse(&broken, Network::Mainnet, ScriptKind::P2tr),
            Err(XpubError::NotAPublicKey)
        );
        assert_eq!(decode(V2_M).child(0x8000_0000), Err(XpubError::NoChild), "hardened needs the private key");
    }

    #[test]
    fn script_kinds_read_and_print_as_in_the_config_and_in_wallet_descriptors() {
        for (kind, name, descriptor) in [(ScriptKind::P2wpkh, "p2wpkh", "wpkh"), (ScriptKind::P2tr, "p2tr", "tr")] {
            assert_eq!(ScriptKind::parse(name), Some(kind));
            assert_eq!(kind.name(), name);
            // BIP 382 `wpkh(KEY)`, BIP 386 `tr(KEY)`.
            assert_eq!(kind.descriptor(), descriptor);
        }
        assert_eq!(ScriptKind::parse("P2TR"), None);
        assert_eq!(ScriptKind::parse("p2pkh"), None);
    }

    #[test]
    fn bip84_keys_are_refused_for_taproot_by_their_own_prefix() {
        let mut raw = bs58::decode(BIP84_ZPUB).with_check(None).into_vec().unwrap();
        raw[..4].copy_from_slice(&VPUB);
        let vpub = bs58::encode(raw).with_check().into_string();
        assert!(vpub.starts_with("vpub"));
        assert!(ExtendedPublicKey::parse(&vpub, Network::Regtest, ScriptKind::P2wpkh).is_ok());
        for (key, network, prefix) in
            [(BIP84_ZPUB, Network::Mainnet, "zpub"), (vpub.as_str(), Network::Regtest, "vpub")]
        {
            assert_eq!(
                ExtendedPublicKey::parse(key, network, ScriptKind::P2tr),
                Err(XpubError::ScriptForVersion { prefix }),
                "{key}"
            );
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let text = |e: XpubError| e.to_string();
        assert_eq!(text(XpubError::Base58), "not valid base58check");
        assert_eq!(text(XpubError::Length(77)), "decodes to 77 bytes, an extended key has 78");
        let version = text(XpubError::Version { found: ZPUB, network: "test networks" });
        assert!(version.starts_with("version bytes 04b24746 are not those of a public extended key for test networks"));
        assert!(text(XpubError::ScriptForVersion { prefix: "vpub" }).starts_with("a vpub key is for p2wpkh"));
        assert!(text(XpubError::NotAPublicKey).contains("public key"));
        assert!(text(XpubError::NoChild).contains("no child"));
    }

    #[test]
    fn identity_indexes_are_the_documented_hash() {
        // SHA-256("txgate/identity\0" || "header:x-api-key" || 0x00 || "alice-key") starts with
        // ee af ff 76 e5 45 6f 5b (Python's hashlib); each word loses its top bit.
        assert_eq!(index_of("header:x-api-key", b"alice-key"), (0x6eaf_ff76, 0x6545_6f5b));
    }

    #[test]
    fn identity_indexes_are_stable_and_non_hardened() {
        let (hi, lo) = index_of("header:x-api-key", b"alice-key");
        assert!(hi < 0x8000_0000 && lo < 0x8000_0000);
        assert_eq!(index_of("header:x-api-key", b"alice-key"), (hi, lo));
        assert_ne!(index_of("header:x-api-key", b"bob-key"), (hi, lo));
        assert_ne!(index_of("mtls_principal", b"alice-key"), (hi, lo), "the source is part of the hash");
    }
}
