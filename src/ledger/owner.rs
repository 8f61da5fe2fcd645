//! Owner ids: who a payment is bound to, as every replica must compute it. SHA-256 of the
//! identity source's name, a 0x1f separator and the identity's value (or HMAC-SHA-256 of the
//! same with `ledger.owner_secret`, so that whoever reads etcd cannot test guesses of short API
//! keys), truncated to 16 bytes. Specified, unlike Rust's `DefaultHasher`, so replicas running
//! different txgate builds agree on owners.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub fn owner_id(source_name: &str, value: &[u8], secret: Option<&[u8]>) -> [u8; 16] {
    let digest: [u8; 32] = match secret.and_then(|s| Hmac::<Sha256>::new_from_slice(s).ok()) {
        Some(mut mac) => {
            mac.update(source_name.as_bytes());
            mac.update(&[0x1f]);
            mac.update(value);
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            h.update(source_name.as_bytes());
            h.update([0x1f]);
            h.update(value);
            h.finalize().into()
        }
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    // Zero means "unbound" in the ledger.
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specified_values() {
        // sha256("header:x-api-key\x1falice"), first 16 bytes: computed independently with
        // `printf 'header:x-api-key\x1falice' | sha256sum`.
        assert_eq!(hex::encode(owner_id("header:x-api-key", b"alice", None)), SHA_ALICE);
        assert_ne!(owner_id("header:x-api-key", b"bob", None), owner_id("header:x-api-key", b"alice", None));
        assert_ne!(owner_id("mtls_principal", b"alice", None), owner_id("header:x-api-key", b"alice", None));
        let keyed = owner_id("header:x-api-key", b"alice", Some(b"s3cret"));
        assert_eq!(hex::encode(keyed), HMAC_ALICE);
    }

    const SHA_ALICE: &str = "6cfde6a0ded3c9a1beb0c75cb6f292cd";
    const HMAC_ALICE: &str = "fbc3578b99401f1f3861930c3c14016e";
}
