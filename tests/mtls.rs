//! mTLS identities end to end: the client certificate's URI SAN (as Istio's SPIFFE ids) gives a
//! discount and owns the payments it uses. Certificates are made here with openssl.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Stack, StackOptions};
use serde_json::json;

const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";
const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").current_dir(dir).args(args).status().expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 and one client certificate per (name, URI SAN).
fn make_certificates(dir: &Path, clients: &[(&str, &str)]) {
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=txgate-test-ca"],
        ]
        .concat(),
    );
    let mut leaves = vec![("server", "IP:127.0.0.1".to_string())];
    leaves.extend(clients.iter().map(|(name, uri)| (*name, format!("URI:{uri}"))));
    for (name, san) in leaves {
        let (keyfile, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
        openssl(
            dir,
            &[&["req"][..], &key, &["-keyout", &keyfile, "-out", &csr, "-subj", &format!("/CN={name}")]].concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn the_peer_principal_gets_its_discount_and_owns_its_payments() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), &[("checkout", CHECKOUT), ("other", OTHER)]);
    let stack = Stack::start_with(StackOptions {
        plugin: json!({
            "bind_to": "mtls_principal",
            "discounts": [{"name": "mesh-checkout", "percent": 20, "mtls_principal_in": [CHECKOUT]}]
        }),
        mtls_dir: Some(certs.path().to_path_buf()),
        ..StackOptions::default()
    });
    let dir = certs.path();
    let challenge = stack.get_mtls(dir, "checkout", "/api/a", &[]);
    assert_eq!(challenge.status, 402, "{}", challenge.body);
    assert_eq!(challenge.json()["payment"]["price_sats"], 800, "the checkout workload's discount");
    assert_eq!(stack.get_mtls(dir, "other", "/api/a", &[]).json()["payment"]["price_sats"], 1000);

    let txid = stack.paid_and_mined(1000);
    let paid = stack.get_mtls(dir, "checkout", "/api/a", &[("x-bitcoin-txid", &txid)]);
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(stack.backend_seen()[0]["headers"]["x-txgate-discount"], "mesh-checkout:20");
    let stolen = stack.get_mtls(dir, "other", "/api/a", &[("x-bitcoin-txid", &txid)]);
    assert_eq!(stolen.status, 402);
    assert_eq!(stolen.json()["error"], "payment_bound_to_other_client");
    assert_eq!(stack.get_mtls(dir, "checkout", "/api/a", &[("x-bitcoin-txid", &txid)]).status, 200);
    assert_eq!(stack.backend_seen().len(), 2);
}
