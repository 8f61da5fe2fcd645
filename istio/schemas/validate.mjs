// Validates Kubernetes manifests: Istio kinds against the vendored Istio CRD validators, core
// Kubernetes kinds against the validators of the npm package kubernetes-models (see README.md).
// Usage: node istio/schemas/validate.mjs FILE.yaml...   Exit 1 if any document is invalid.
import { existsSync, readFileSync, readdirSync } from "node:fs";
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
const coreDir = join(here, "node_modules", "kubernetes-models", "_schemas");
const coreVersion = JSON.parse(readFileSync(join(here, "node_modules", "kubernetes-models", "package.json"), "utf8")).version;

// kubernetes-models names a kind's validator IoK8sApi<Group><Version><Kind>: `v1 Service` is
// IoK8sApiCoreV1Service, `apps/v1 DaemonSet` IoK8sApiAppsV1DaemonSet,
// `rbac.authorization.k8s.io/v1 Role` IoK8sApiRbacV1Role.
function coreSchema(apiVersion, kind) {
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["core", apiVersion];
  const name = `IoK8sApi${cap(group.split(".")[0])}${cap(version)}${kind}`;
  return existsSync(join(coreDir, `${name}.js`)) ? name : null;
}

// Unknown fields. The OpenAPI schemas leave them open (the API server drops them, or refuses them
// under strict field validation, kubectl's default), so the generated validators accept `imagee:`.
// Each object is handed to the validator behind a Proxy that records the keys the validator looks
// up: it looks up every property its schema declares, and enumerates the keys of free-form maps
// (labels, resources). A key of a looked-up object that the validator never asked for is not in
// the schema. Objects the validator never looked into (schemaless fields) are not judged.
function traced(value, path, seen) {
  if (Array.isArray(value)) return value.map((v, i) => traced(v, `${path}/${i}`, seen));
  if (value === null || typeof value !== "object") return value;
  const rec = { path, keys: Object.keys(value), read: new Set(), enumerated: false, touched: false };
  seen.push(rec);
  const inner = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, traced(v, `${path}/${k}`, seen)]));
  const note = (k) => {
    rec.touched = true;
    if (typeof k === "string") rec.read.add(k);
  };
  return new Proxy(inner, {
    get: (t, k, r) => (note(k), Reflect.get(t, k, r)),
    has: (t, k) => (note(k), Reflect.has(t, k)),
    getOwnPropertyDescriptor: (t, k) => (note(k), Reflect.getOwnPropertyDescriptor(t, k)),
    ownKeys: (t) => ((rec.touched = true), (rec.enumerated = true), Reflect.ownKeys(t)),
  });
}

function validateCore(validate, obj) {
  const seen = [];
  const errors = validate(traced(obj, "", seen))
    ? []
    : validate.errors.map((e) => `${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`);
  for (const r of seen) {
    if (!r.touched || r.enumerated) continue;
    for (const k of r.keys) if (!r.read.has(k)) errors.push(`${r.path}/${k} unknown field`);
  }
  return errors;
}

let failed = 0;
let istio = 0;
let core = 0;
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
    const what = `${key} ${obj.metadata?.namespace ?? "-"}/${obj.metadata?.name}`;
    const name = KINDS[key];
    const coreName = name ? null : coreSchema(String(obj.apiVersion), String(obj.kind));
    if (!name && !coreName) {
      console.error(`${where}: no schema for ${key}`);
      failed++;
      continue;
    }
    let errors;
    let source;
    if (name) {
      const { validate } = await import(pathToFileURL(join(here, schemaDir, `${name}.js`)).href);
      istio++;
      source = schemaDir;
      errors = validate(obj)
        ? []
        : validate.errors.map((e) => `${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`);
    } else {
      const { validate } = await import(pathToFileURL(join(coreDir, `${coreName}.js`)).href);
      core++;
      source = `kubernetes-models ${coreVersion}, strict`;
      errors = validateCore(validate, obj);
    }
    if (errors.length === 0) {
      console.log(`${where}: ${what}: valid (${source})`);
    } else {
      failed++;
      for (const e of errors) console.error(`${where}: ${what}: ${e}`);
    }
  }
}
console.log(`${istio + core} documents checked (${istio} Istio, ${core} core Kubernetes), ${failed} invalid`);
process.exit(failed ? 1 : 0);
