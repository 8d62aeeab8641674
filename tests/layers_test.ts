/**
 * The layering README → Layout promises, read from the import graph itself: only the server knows
 * gRPC, every module imports only its own layer or the ones below it, and no module imports
 * itself through others.
 */
import assert from "node:assert/strict";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The layers, lowest first: a module may import its own layer and the ones before it. */
const LAYERS: { name: string; modules: RegExp }[] = [
  { name: "errors", modules: /^lib\/errors\.ts$/ },
  { name: "config and log", modules: /^lib\/(config\/.*|log\.ts)$/ },
  { name: "mount and health", modules: /^lib\/(mount|health)\// },
  { name: "services", modules: /^lib\/(csi\/.*|registration\.ts)$/ },
  { name: "diagnose", modules: /^lib\/diagnose\// },
  { name: "server", modules: /^lib\/(server|grpc_log|proto)\.ts$|^lib\/[a-z_]+_proto\.json$/ },
  { name: "main", modules: /^main\.ts$/ },
];

/** The only modules that may import grpc-js: the server and its two parts. */
const GRPC_MODULES = ["lib/grpc_log.ts", "lib/proto.ts", "lib/server.ts"];

/** A module's imports: relative ones resolved to repository paths, the rest as written. */
type Graph = Map<string, string[]>;

/** The specifiers a module imports (type-only imports too: they tie the modules together). */
function specifiers(source: string): string[] {
  const found: string[] = [];
  const pattern = /^\s*(?:import|export)\s+(?:[^"';]*?\s+from\s+)?["']([^"']+)["']/gm;
  for (const match of source.matchAll(pattern)) found.push(match[1] as string);
  return found;
}

/** The import graph of main.ts and every non-test module under lib/. */
async function driverGraph(): Promise<Graph> {
  const graph: Graph = new Map();
  const files = ["main.ts"];
  for await (const path of walk("lib")) {
    if (path.endsWith(".ts") && !path.endsWith("_test.ts")) files.push(path);
  }
  for (const file of files) {
    const source = await Deno.readTextFile(join(ROOT, file));
    graph.set(
      file,
      specifiers(source).map((s) => s.startsWith(".") ? normalize(join(dirname(file), s)) : s),
    );
  }
  return graph;
}

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(join(ROOT, dir))) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(path);
    else yield path;
  }
}

function layerOf(module: string): number {
  return LAYERS.findIndex((layer) => layer.modules.test(module));
}

/** One line per import that breaks the layering; empty when it holds. */
function layeringViolations(graph: Graph): string[] {
  const out: string[] = [];
  for (const [module, imports] of graph) {
    const own = layerOf(module);
    if (own < 0) out.push(`${module} belongs to no layer`);
    for (const target of imports) {
      // A package (from deno.json's imports, npm: or node:), not one of the driver's files.
      if (!/\.(ts|json)$/.test(target)) {
        if (target.startsWith("@grpc/grpc-js") && !GRPC_MODULES.includes(module)) {
          out.push(`${module} imports @grpc/grpc-js: only the server may`);
        }
        continue;
      }
      if (target === "deno.json") continue;
      const theirs = layerOf(target);
      if (theirs < 0) out.push(`${module} imports ${target}, outside the driver's layers`);
      else if (theirs > own) {
        out.push(
          `${module} (${LAYERS[own]?.name}) imports ${target} (${
            LAYERS[theirs]?.name
          }), a layer above`,
        );
      }
    }
  }
  return out;
}

/** Every import cycle, each as the path that closes it; empty when there is none. */
function cycles(graph: Graph): string[][] {
  const found: string[][] = [];
  const done = new Set<string>();
  const stack: string[] = [];
  const visit = (module: string) => {
    const at = stack.indexOf(module);
    if (at >= 0) {
      found.push([...stack.slice(at), module]);
      return;
    }
    if (done.has(module) || !graph.has(module)) return;
    stack.push(module);
    for (const next of graph.get(module) ?? []) visit(next);
    stack.pop();
    done.add(module);
  };
  for (const module of [...graph.keys()].sort()) visit(module);
  return found;
}

Deno.test("only lib/server.ts and its parts import grpc-js; every import goes down a layer", async () => {
  const graph = await driverGraph();
  assert.ok(graph.size > 20, `read ${graph.size} modules`);
  assert.deepEqual(layeringViolations(graph), []);
});

Deno.test("the driver's modules import no cycle (type-only imports included)", async () => {
  assert.deepEqual(cycles(await driverGraph()), []);
});

/** The test helpers a unit test may use: none starts a driver or SPIRE, or speaks gRPC. */
const UNIT_HELPERS = [
  "tests/_assert.ts",
  "tests/_env.ts",
  "tests/_fake_mounter.ts",
  "tests/_permissions.ts",
  "tests/_requests.ts",
];

/** One line per helper a unit test under lib/ imports beyond UNIT_HELPERS. */
async function unitTestViolations(): Promise<string[]> {
  const out: string[] = [];
  for await (const file of walk("lib")) {
    if (!file.endsWith("_test.ts")) continue;
    // The server's own test speaks gRPC to it: the CSI client is its subject, not a shortcut.
    const allowed = file === "lib/server_test.ts"
      ? [...UNIT_HELPERS, "tests/_csi_client.ts"]
      : UNIT_HELPERS;
    const source = await Deno.readTextFile(join(ROOT, file));
    for (const spec of specifiers(source)) {
      const target = normalize(join(dirname(file), spec));
      if (spec.startsWith(".") && target.startsWith("tests/") && !allowed.includes(target)) {
        out.push(`${file} imports ${target}`);
      }
    }
  }
  return out;
}

Deno.test("unit tests under lib/ use no integration helper (driver processes, SPIRE, kubelet)", async () => {
  assert.deepEqual(await unitTestViolations(), []);
});

Deno.test("the layering check finds a gRPC import, an upward import and a cycle", () => {
  const graph: Graph = new Map([
    ["lib/mount/mounter.ts", ["@grpc/grpc-js", "lib/errors.ts"]],
    ["lib/errors.ts", ["lib/csi/node.ts"]],
    ["lib/csi/node.ts", ["lib/mount/mounter.ts", "lib/errors.ts"]],
  ]);
  assert.deepEqual(layeringViolations(graph), [
    "lib/mount/mounter.ts imports @grpc/grpc-js: only the server may",
    "lib/errors.ts (errors) imports lib/csi/node.ts (services), a layer above",
  ]);
  assert.deepEqual(cycles(graph), [[
    "lib/csi/node.ts",
    "lib/mount/mounter.ts",
    "lib/errors.ts",
    "lib/csi/node.ts",
  ]]);
  const source = 'import type { A } from "./a.ts";\nexport { b } from "../b.ts";\n' +
    'import "./c.ts";\nexport const d = { e: "./not-an-import.ts" };';
  assert.deepEqual(specifiers(source), ["./a.ts", "../b.ts", "./c.ts"]);
});
