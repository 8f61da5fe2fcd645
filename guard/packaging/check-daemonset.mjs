// Checks that guard/packaging/daemonset.yaml makes sense for the agent (the Kubernetes schemas are
// checked separately by istio/schemas/validate.mjs): hostNetwork, exactly the systemd unit's
// capabilities, bpffs and the socket directory as hostPath mounts that hold --pin-dir and
// --socket, the agent's own flags only, the Envoy uid the agent admits, an image, no API token.
// Usage: node check-daemonset.mjs DAEMONSET.yaml UNIT.service CONF FLAG...
// (FLAG: the flags the agent's parser knows, taken from guard/src/main.rs by check.sh.)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const { parseAllDocuments } = createRequire(join(root, "istio", "schemas", "package.json"))("yaml");

const [file, unitFile, confFile, ...flags] = process.argv.slice(2);
const problems = [];
const expect = (ok, what) => {
  if (!ok) problems.push(what);
};

const docs = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS()).filter(Boolean);
const find = (kind) => docs.filter((d) => d.kind === kind);
const [ds] = find("DaemonSet");
const [ns] = find("Namespace");
const [sa] = find("ServiceAccount");
if (!ds) {
  console.error(`${file}: no DaemonSet`);
  process.exit(1);
}
const pod = ds.spec?.template?.spec ?? {};
const containers = pod.containers ?? [];
const c = containers[0] ?? {};

// Where it runs: the node's network namespace (XDP goes on the node's NIC), its own namespace and
// account, no API token (the agent never calls the API server).
expect(pod.hostNetwork === true, "spec.template.spec.hostNetwork must be true (XDP attaches to the node's NIC)");
expect(ns?.metadata?.name === ds.metadata?.namespace, `the Namespace document must be the DaemonSet's (${ds.metadata?.namespace})`);
expect(ns?.metadata?.labels?.["pod-security.kubernetes.io/enforce"] === "privileged",
  "the namespace needs pod-security.kubernetes.io/enforce: privileged (hostNetwork and hostPath)");
expect(sa && pod.serviceAccountName === sa.metadata?.name && sa.metadata?.namespace === ds.metadata?.namespace,
  "the pod must run as the ServiceAccount defined beside it");
expect(pod.automountServiceAccountToken === false && sa?.automountServiceAccountToken === false,
  "no service account token: automountServiceAccountToken: false on the pod and the account");
expect(containers.length === 1, `one container, found ${containers.length}`);
expect(typeof c.image === "string" && c.image.trim() !== "", `container ${c.name}: no image`);

// Capabilities: exactly the unit's (CAP_BPF CAP_NET_ADMIN CAP_PERFMON), everything else dropped.
const unit = readFileSync(unitFile, "utf8");
const capsOf = (key) => (unit.match(new RegExp(`^${key}=(.*)$`, "m"))?.[1] ?? "").split(/\s+/).filter(Boolean)
  .map((cap) => cap.replace(/^CAP_/, "")).sort().join(" ");
const unitCaps = capsOf("AmbientCapabilities");
expect(unitCaps !== "" && unitCaps === capsOf("CapabilityBoundingSet"), `${unitFile}: AmbientCapabilities and CapabilityBoundingSet differ`);
const sc = c.securityContext ?? {};
const added = [...(sc.capabilities?.add ?? [])].sort().join(" ");
expect(added === unitCaps, `capabilities.add is [${added}], the systemd unit grants [${unitCaps}]`);
expect(JSON.stringify(sc.capabilities?.drop) === '["ALL"]', 'capabilities.drop must be ["ALL"]');
expect(sc.privileged !== true, "privileged: true grants every capability");
expect(sc.allowPrivilegeEscalation === false, "allowPrivilegeEscalation must be false");
expect(sc.readOnlyRootFilesystem === true, "readOnlyRootFilesystem must be true");

// Arguments: only flags the agent knows, each with a value; the ones it requires.
const args = c.args ?? [];
const opt = {};
for (let i = 0; i < args.length; i += 2) {
  expect(flags.includes(args[i]), `args: ${args[i]} is not a flag of txgate-guard (${flags.join(" ")})`);
  expect(i + 1 < args.length, `args: ${args[i]} has no value`);
  (opt[args[i]] ??= []).push(args[i + 1]);
}
for (const required of ["--iface", "--port", "--allow-uid"]) expect(opt[required], `args: ${required} is required`);
for (const p of (opt["--port"] ?? []).flatMap((v) => v.split(","))) {
  expect(/^[0-9]+$/.test(p) && +p >= 1 && +p <= 65535, `args: --port ${p} is not a port`);
}

// The Envoy uid the agent admits: istio-proxy's 1337, the same as ENVOY_UID for systemd.
const envoyUid = readFileSync(confFile, "utf8").match(/^ENVOY_UID=(\d+)$/m)?.[1];
expect(JSON.stringify(opt["--allow-uid"]) === JSON.stringify(["1337"]),
  `args: --allow-uid ${opt["--allow-uid"]}: istio-proxy runs as uid 1337 and only it may post bans`);
expect(envoyUid === "1337", `${confFile}: ENVOY_UID=${envoyUid}, the DaemonSet admits 1337`);

// Mounts: bpffs at /sys/fs/bpf holding --pin-dir (bans survive a restart), the socket directory as
// a hostPath that the sidecars mount too, holding --socket.
const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
const mountFor = (path) => (c.volumeMounts ?? [])
  .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
  .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
const pinDir = opt["--pin-dir"]?.[0] ?? "/sys/fs/bpf/txgate";
const bpf = mountFor(pinDir);
expect(bpf && bpf.mountPath === "/sys/fs/bpf" && volumes[bpf.name]?.hostPath?.path === "/sys/fs/bpf",
  `--pin-dir ${pinDir} must be on the node's bpffs: a hostPath /sys/fs/bpf mounted at /sys/fs/bpf`);
const socket = opt["--socket"]?.[0] ?? "/run/txgate-guard/bans.sock";
const sock = mountFor(socket);
expect(sock && sock.mountPath === posix.dirname(socket) && volumes[sock.name]?.hostPath && sock.readOnly !== true,
  `--socket ${socket}: its directory must be a writable hostPath mount (the sidecars mount the same host directory)`);
for (const m of c.volumeMounts ?? []) expect(volumes[m.name]?.hostPath, `volumeMount ${m.name}: not a hostPath volume`);

if (problems.length) {
  for (const p of problems) console.error(`${file}: ${p}`);
  process.exit(1);
}
console.log(`${file}: hostNetwork, capabilities [${added}] as the unit's, bpffs and socket hostPaths, --allow-uid 1337, image ${c.image}`);
