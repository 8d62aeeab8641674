/**
 * The Containerfile and the compile task, checked against the rest of the project: the binary is
 * built by `deno task compile` with the one permission set, the image provides mount/umount at
 * exactly the allowlisted paths, and the entrypoint is in the image.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import denoConfig from "../deno.json" with { type: "json" };
import {
  CONTAINER_PATHS,
  declaredPermissionSet,
  permissionFlags,
  V8_FLAGS,
} from "../lib/permissions.ts";
import {
  BINARY_NAME,
  checkArgs,
  compileArgs,
  isRuntimeDownloadFailure,
  outputPath,
  parseCompileOptions,
  parseTargets,
  TARGET_ARCH,
  TARGETS,
} from "../tools/compile.ts";
import { ROOT } from "./_driver.ts";

interface Instruction {
  keyword: string;
  args: string;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Splits a Containerfile into stages of instructions (continuations joined, comments dropped). */
function parseContainerfile(text: string): Stage[] {
  const logical: string[] = [];
  let current = "";
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw)) continue;
    const line = raw.trimEnd();
    if (line.endsWith("\\")) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    current += line;
    if (current.trim() !== "") logical.push(current.trim());
    current = "";
  }
  const stages: Stage[] = [];
  for (const line of logical) {
    const [keyword = "", ...rest] = line.split(/\s+/);
    const args = rest.join(" ");
    if (keyword.toUpperCase() === "FROM") {
      const match = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(match, `bad FROM: ${args}`);
      stages.push({ from: match[1] as string, name: match[2], instructions: [] });
      continue;
    }
    const stage = stages.at(-1);
    assert.ok(stage, `${keyword} before FROM`);
    stage.instructions.push({ keyword: keyword.toUpperCase(), args });
  }
  return stages;
}

const TEXT = await Deno.readTextFile(join(ROOT, "Containerfile"));
const STAGES = parseContainerfile(TEXT);

function stage(name: string): Stage {
  const found = STAGES.find((s) => s.name === name);
  assert.ok(found, `no stage ${name}`);
  return found;
}

function runs(s: Stage): string {
  return s.instructions.filter((i) => i.keyword === "RUN").map((i) => i.args).join("\n");
}

/** Paths created under /rootfs in the rootfs stage (copies and symlinks), as seen in the image. */
function imagePaths(): { files: Map<string, string>; links: Map<string, string> } {
  const rootfs = stage("rootfs");
  const files = new Map<string, string>();
  const links = new Map<string, string>();
  for (const { keyword, args } of rootfs.instructions) {
    if (keyword === "COPY") {
      const parts = args.split(/\s+/).filter((p) => !p.startsWith("--"));
      const dest = parts.at(-1) ?? "";
      if (dest.startsWith("/rootfs/")) files.set(dest.slice("/rootfs".length), parts[0] ?? "");
    }
  }
  const script = runs(rootfs);
  for (const match of script.matchAll(/\bcp\s+(\S+)\s+\/rootfs(\/\S+?);?(?=\s|$)/g)) {
    files.set(match[2] as string, match[1] as string);
  }
  for (const match of script.matchAll(/\bln\s+-s\s+(\S+)\s+\/rootfs(\/\S+?);?(?=\s|$)/g)) {
    links.set(match[2] as string, match[1] as string);
  }
  return { files, links };
}

Deno.test("Containerfile: the builder runs deno task compile on the pinned Deno image", () => {
  const builder = stage("builder");
  assert.match(builder.from, /^denoland\/deno:(bin|debian)-\d+\.\d+\.\d+$/);
  assert.equal(builder.from.split("-").at(-1), Deno.version.deno, "image Deno != tested Deno");
  const script = runs(builder);
  assert.match(
    script,
    /\bdeno task compile --target="\$\{TARGETARCH\}" --kubelet-dir="\$\{KUBELET_DIR\}"/,
  );
  // No second copy of the flags: the task owns them.
  const instructions = STAGES.flatMap((s) => s.instructions.map((i) => i.args)).join("\n");
  assert.doesNotMatch(instructions, /deno compile|--allow-|--v8-flags|DENORT_BIN|--include/);
});

Deno.test("Containerfile: the builder copies every local module main.ts and the compile task import", async () => {
  const builder = stage("builder");
  const copied = builder.instructions
    .filter((i) => i.keyword === "COPY" && !i.args.startsWith("--from"))
    .flatMap((i) => i.args.split(/\s+/).slice(0, -1));
  const local: string[] = [];
  for (const entry of ["main.ts", "tools/compile.ts"]) {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(output.success, new TextDecoder().decode(output.stderr));
    const info = JSON.parse(new TextDecoder().decode(output.stdout)) as {
      modules: { specifier: string }[];
    };
    local.push(
      ...info.modules
        .map((m) => m.specifier)
        .filter((s) => s.startsWith("file://"))
        .map((s) => decodeURIComponent(new URL(s).pathname).slice(ROOT.length)),
    );
  }
  assert.ok(local.includes("lib/csi_proto.json"), "the proto is embedded through a JSON import");
  for (const file of [...local, "deno.json", "deno.lock"]) {
    assert.ok(
      copied.some((c) => c === file || (c.endsWith("/") && file.startsWith(c))),
      `${file} is not copied into the builder`,
    );
  }
});

Deno.test("Containerfile: each architecture's binary comes from the compile task's output", () => {
  const script = runs(stage("builder"));
  for (const target of TARGETS) {
    assert.match(script, new RegExp(`${TARGET_ARCH[target]}\\) target=${target} ;;`));
    assert.equal(outputPath(target), `dist/${target}/${BINARY_NAME}`);
  }
  assert.match(script, new RegExp(`cp "dist/\\$\\{target\\}/${BINARY_NAME}" /out/${BINARY_NAME}`));
  assert.equal(imagePaths().files.get(`/usr/local/bin/${BINARY_NAME}`), `/out/${BINARY_NAME}`);
});

Deno.test("Containerfile: mount and umount are busybox symlinks at exactly the allowlisted paths", () => {
  const { files, links } = imagePaths();
  const allowlist = declaredPermissionSet().run;
  assert.deepEqual([...links.keys()].sort(), [...allowlist].sort());
  assert.deepEqual(
    [CONTAINER_PATHS.mountPath, CONTAINER_PATHS.umountPath].sort(),
    [...allowlist].sort(),
  );
  const targets = new Set(links.values());
  assert.equal(targets.size, 1, "both links point at one busybox");
  const busybox = [...targets][0] as string;
  assert.equal(files.get(busybox), "/bin/busybox", "the link target is the copied busybox");
  assert.ok(!allowlist.includes(busybox), "the busybox binary itself must not be allowlisted");
  const runDirs = allowlist.map((path) => path.slice(0, path.lastIndexOf("/") + 1));
  assert.ok(!runDirs.some((dir) => busybox.startsWith(dir)), "busybox sits beside mount/umount");
  assert.match(runs(stage("rootfs")), /busybox-static=/, "busybox comes from busybox-static");
  assert.match(
    runs(stage("rootfs")),
    /busybox is not static/,
    "the build refuses a dynamic busybox",
  );
});

Deno.test("Containerfile: the runtime is scratch with the entrypoint, libraries and labels", () => {
  const runtime = STAGES.at(-1);
  assert.ok(runtime);
  assert.equal(runtime.from, "scratch");
  const copies = runtime.instructions.filter((i) => i.keyword === "COPY").map((i) => i.args);
  assert.deepEqual(copies, ["--from=rootfs /rootfs/ /"]);
  const entrypoint = runtime.instructions.find((i) => i.keyword === "ENTRYPOINT");
  assert.ok(entrypoint);
  const argv = JSON.parse(entrypoint.args) as string[];
  assert.equal(argv.length, 1);
  assert.ok(imagePaths().files.has(argv[0] as string), `${argv[0]} is not in the image`);
  // The libraries are those ldd lists for the binary, copied at their own paths.
  assert.match(runs(stage("rootfs")), /ldd \/rootfs\/usr\/local\/bin\/spiffe-csi-driver/);
  assert.match(runs(stage("rootfs")), /cp -L --parents "\$lib" \/rootfs\//);
  // OCI labels.
  const labels = runtime.instructions.filter((i) => i.keyword === "LABEL").map((i) => i.args)
    .join(" ");
  assert.match(labels, /org\.opencontainers\.image\.source="\$\{SOURCE\}"/);
  assert.match(labels, /org\.opencontainers\.image\.version="\$\{VERSION\}"/);
  assert.match(labels, /org\.opencontainers\.image\.licenses="Apache-2\.0"/);
  const version = runtime.instructions.find((i) => i.keyword === "ARG" && /^VERSION=/.test(i.args));
  assert.equal(version?.args, `VERSION=${denoConfig.version}`);
});

Deno.test("Containerfile: every base image is pinned to a release and multi-arch is wired", () => {
  for (const s of STAGES) {
    if (s.from === "scratch") continue;
    assert.match(s.from, /:[^:]*\d[^:]*$/, `${s.from} is not pinned to a version`);
    assert.doesNotMatch(s.from, /:latest$/);
  }
  assert.match(TEXT, /FROM --platform=\$BUILDPLATFORM denoland\/deno/);
  assert.match(TEXT, /ARG TARGETARCH/);
});

Deno.test("compile task: flags are the driver's permission set, V8 flags and nothing more", () => {
  for (const target of TARGETS) {
    const args = compileArgs(target);
    assert.equal(args[0], "compile");
    const perms = permissionFlags(CONTAINER_PATHS);
    for (const f of perms) assert.ok(args.includes(f), `missing ${f}`);
    assert.deepEqual(args.filter((a) => /^--(allow|deny)-|^-A$|^--no-prompt$/.test(a)), perms);
    assert.ok(args.includes(`--v8-flags=${V8_FLAGS}`));
    assert.ok(!args.some((a) => a === "--allow-all" || a.startsWith("--include")));
    assert.deepEqual(args.slice(-5), [
      "--target",
      target,
      "--output",
      outputPath(target),
      "main.ts",
    ]);
  }
  assert.deepEqual(checkArgs(), ["check", "--frozen", "main.ts"]);
  assert.match(denoConfig.tasks.compile, /tools\/compile\.ts$/);
  assert.doesNotMatch(denoConfig.tasks.compile, /--allow-all|\s-A\b/);
});

Deno.test("compile task: targets accept Rust triples, Docker arch names and all", () => {
  assert.deepEqual(parseTargets([]), [...TARGETS]);
  assert.deepEqual(parseTargets(["--target=amd64"]), ["x86_64-unknown-linux-gnu"]);
  assert.deepEqual(parseTargets(["--target", "arm64"]), ["aarch64-unknown-linux-gnu"]);
  assert.deepEqual(parseTargets(["--target=aarch64-unknown-linux-gnu"]), [
    "aarch64-unknown-linux-gnu",
  ]);
  assert.throws(() => parseTargets(["--target=riscv64"]), RangeError);
  assert.throws(() => parseTargets(["extra"]), RangeError);
});

Deno.test("compile task: --kubelet-dir re-targets only the pods dir of the permission set", () => {
  const microk8s = "/var/snap/microk8s/common/var/lib/kubelet";
  const { targets, paths } = parseCompileOptions(["--target=amd64", `--kubelet-dir=${microk8s}`]);
  assert.deepEqual(targets, ["x86_64-unknown-linux-gnu"]);
  assert.deepEqual(paths, { ...CONTAINER_PATHS, kubeletDir: microk8s });
  const args = compileArgs("x86_64-unknown-linux-gnu", paths);
  assert.ok(
    args.includes(
      `--allow-write=/spiffe-workload-api,/spiffe-csi/csi.sock,${microk8s}/pods,/registration/csi.spiffe.io-reg.sock`,
    ),
  );
  const allowed = args.filter((a) => a.startsWith("--allow-")).flatMap((a) =>
    a.slice(a.indexOf("=") + 1).split(",")
  );
  assert.ok(!allowed.includes("/var/lib/kubelet/pods"), "the default pods dir is not allowed too");
  assert.deepEqual(parseCompileOptions([]).paths, CONTAINER_PATHS);
  for (const bad of ["relative", "/a,b", "/x/../etc", "/trailing/"]) {
    assert.throws(() => parseCompileOptions([`--kubelet-dir=${bad}`]), RangeError, bad);
  }
  assert.throws(() => parseCompileOptions(["--kubelet-dir"]), RangeError);
});

Deno.test("compile task: a runtime download failure is recognised", () => {
  const stderr = "error: Writing deno compile executable to temporary file 'x'\n\nCaused by:\n" +
    "    0: Setting up base binary.\n    1: error sending request for url " +
    "(https://dl.deno.land/release/v2.9.3/denort-x86_64-unknown-linux-gnu.zip): dns error";
  assert.ok(isRuntimeDownloadFailure(stderr));
  assert.ok(!isRuntimeDownloadFailure('error: Module not found "file:///src/lib/x.ts"'));
});

Deno.test("compile task: builds, or fails fast with one clear line when denort is unreachable", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["task", "compile", "--target=amd64"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  if (output.success) {
    const info = await Deno.stat(join(ROOT, outputPath("x86_64-unknown-linux-gnu")));
    assert.ok(info.isFile && info.size > 1_000_000);
    return;
  }
  assert.equal(output.code, 1, stderr);
  const ours = stderr.split("\n").filter((l) => l.startsWith("deno task compile:"));
  assert.deepEqual(ours.length, 1, stderr);
  assert.match(ours[0] ?? "", /cannot fetch Deno's denort runtime for x86_64-unknown-linux-gnu/);
  assert.doesNotMatch(stderr, /Stack backtrace|Caused by/, "the raw error is not dumped");
});
