// Validates Kubernetes manifests against the vendored Istio CRD validators (see README.md).
// Usage: node istio/schemas/validate.mjs FILE.yaml...   Exit 1 if any document is invalid.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const schemaDir = readdirSync(here).find((d) => d.startsWith("istio-"));
const KINDS = {
  "extensions.istio.io/v1alpha1 WasmPlugin": "ExtensionsIstioIoV1alpha1WasmPlugin",
  "networking.istio.io/v1 ServiceEntry": "NetworkingIstioIoV1ServiceEntry",
  "networking.istio.io/v1 DestinationRule": "NetworkingIstioIoV1DestinationRule",
  "networking.istio.io/v1 Sidecar": "NetworkingIstioIoV1Sidecar",
};
// Core Kubernetes kinds have no Istio schema; they are reported, not validated.
const CORE = new Set(["v1 Service"]);

let failed = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"), { uniqueKeys: true });
  for (const [i, doc] of docs.entries()) {
    const where = `${file}#${i}`;
    if (doc.errors.length) {
      console.error(`${where}: YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
      failed++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const key = `${obj.apiVersion} ${obj.kind}`;
    if (CORE.has(key)) {
      console.log(`${where}: ${key} (core kind, not an Istio CRD: skipped)`);
      continue;
    }
    const name = KINDS[key];
    if (!name) {
      console.error(`${where}: no vendored schema for ${key}`);
      failed++;
      continue;
    }
    const { validate } = await import(pathToFileURL(join(here, schemaDir, `${name}.js`)).href);
    checked++;
    if (validate(obj)) {
      console.log(`${where}: ${key} ${obj.metadata?.namespace}/${obj.metadata?.name}: valid (${schemaDir})`);
    } else {
      failed++;
      for (const e of validate.errors) {
        console.error(`${where}: ${key} ${obj.metadata?.name}: ${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`);
      }
    }
  }
}
console.log(`${checked} Istio documents checked, ${failed} invalid`);
process.exit(failed ? 1 : 0);
