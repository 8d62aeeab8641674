/**
 * The Containerfile and the compile task, checked by their effect: the builder stage runs in a
 * busybox root with `deno` recording its calls, so what it asks the compile task for and which file
 * it hands to the next stage are observed, not read from its wording; the image root that
 * tools/rootfs.sh builds holds exactly the entrypoint and util-linux mount/umount, and runs them.
 */
import assert from "node:assert/strict";
import { cpSync } from "node:fs";
import { basename, dirname, join, posix } from "node:path";
import denoConfig from "../deno.json" with { type: "json" };
import {
  CONTAINER_PATHS,
  declaredPermissionSet,
  permissionFlags,
  V8_FLAGS,
} from "../lib/config/permissions.ts";
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
import { exists, walk } from "./_env.ts";

interface Instruction {
  keyword: string;
  args: string;
}

interface Stage {
  from: string;
  platform: string | undefined;
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
      const match = /^(?:--platform=(\S+)\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      assert.ok(match, `bad FROM: ${args}`);
      stages.push({
        from: match[2] as string,
        platform: match[1],
        name: match[3],
        instructions: [],
      });
      continue;
    }
    const stage = stages.at(-1);
    assert.ok(stage, `${keyword} before FROM`);
    stage.instructions.push({ keyword: keyword.toUpperCase(), args });
  }
  return stages;
}

const MICROK8S = "/var/snap/microk8s/common/var/lib/kubelet";

const TEXT = await Deno.readTextFile(join(ROOT, "Containerfile"));
const STAGES = parseContainerfile(TEXT);

function stage(name: string): Stage {
  const found = STAGES.find((s) => s.name === name);
  assert.ok(found, `no stage ${name}`);
  return found;
}

/** The instructions of `s` with this keyword. */
function instructions(s: Stage, keyword: string): Instruction[] {
  return s.instructions.filter((i) => i.keyword === keyword);
}

/** A COPY's sources, destination and source stage (undefined: the build context). */
function copyOf(i: Instruction): { from: string | undefined; sources: string[]; dest: string } {
  const words = i.args.split(/\s+/);
  const from = words[0]?.startsWith("--from=") ? words.shift()?.slice("--from=".length) : undefined;
  return { from, sources: words.slice(0, -1), dest: words.at(-1) as string };
}

/** The value an ARG instruction declares (empty when it declares none), by name. */
function argOf(i: Instruction): [string, string] {
  const eq = i.args.indexOf("=");
  return eq < 0 ? [i.args, ""] : [i.args.slice(0, eq), i.args.slice(eq + 1)];
}

/** The values the ARGs of `s` declare. */
function argDefaults(s: Stage): Map<string, string> {
  return new Map(instructions(s, "ARG").map(argOf));
}

const BUSYBOX = "/usr/bin/busybox";
const NO_SANDBOX = Deno.uid() !== 0
  ? "needs root for chroot"
  : !(await exists(BUSYBOX))
  ? `needs a static busybox at ${BUSYBOX}`
  : undefined;

/**
 * Builds `s` in a fresh root as a container build would: ARGs (with `args` as build arguments)
 * become the environment, COPYs copy from the project, WORKDIR is where each RUN starts, and each
 * RUN runs under busybox sh in a chroot. `deno` there only records its calls; `afterRun` sees
 * them and may write what they would have made, or answer false to stop the build there.
 */
async function build(
  s: Stage,
  args: Record<string, string>,
  afterRun: (root: string, denoCalls: string[][]) => Promise<boolean> | boolean,
): Promise<{ root: string; finished: boolean }> {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-build-" });
  await Deno.mkdir(`${root}/bin`);
  await Deno.copyFile(BUSYBOX, `${root}/bin/busybox`);
  for (const tool of ["sh", "cp", "mkdir"]) await Deno.symlink("busybox", `${root}/bin/${tool}`);
  await Deno.writeTextFile(
    `${root}/bin/deno`,
    `#!/bin/sh\nfor a in "$@"; do printf '%s\\037' "$a"; done >> /deno-calls\necho >> /deno-calls\n`,
    { mode: 0o755 },
  );
  const env: Record<string, string> = { PATH: "/bin" };
  let workdir = "/";
  for (const i of s.instructions) {
    if (i.keyword === "ARG") {
      const [name, value] = argOf(i);
      env[name] = args[name] ?? value;
    } else if (i.keyword === "WORKDIR") {
      workdir = posix.resolve(workdir, i.args);
      await Deno.mkdir(join(root, workdir), { recursive: true });
    } else if (i.keyword === "COPY") {
      const copy = copyOf(i);
      assert.equal(copy.from, undefined, "a stage built here copies from the project only");
      const dest = posix.resolve(workdir, copy.dest);
      for (const source of copy.sources) {
        const isDir = (await Deno.stat(join(ROOT, source))).isDirectory;
        const into = !isDir && copy.dest.endsWith("/") ? `${dest}/${basename(source)}` : dest;
        await Deno.mkdir(isDir ? join(root, into) : dirname(join(root, into)), { recursive: true });
        cpSync(join(ROOT, source), join(root, into), { recursive: true });
      }
    } else if (i.keyword === "RUN") {
      const output = await new Deno.Command("/usr/sbin/chroot", {
        args: [root, "/bin/sh", "-c", `cd ${workdir} || exit 1\n${i.args}`],
        clearEnv: true,
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const calls = (await Deno.readTextFile(`${root}/deno-calls`).catch(() => ""))
        .split("\n").filter((line) => line !== "").map((line) => line.split("\x1f").slice(0, -1));
      await Deno.remove(`${root}/deno-calls`).catch(() => {});
      if (!output.success || !(await afterRun(root, calls))) return { root, finished: false };
    }
  }
  return { root, finished: true };
}

Deno.test({
  name: "Containerfile: the builder asks the compile task, and only it, for TARGETARCH's binary " +
    "and hands exactly that file to the rootfs stage" + (NO_SANDBOX ? ` (${NO_SANDBOX})` : ""),
  ignore: NO_SANDBOX !== undefined,
  async fn() {
    const builder = stage("builder");
    const handOver = instructions(stage("rootfs"), "COPY").map(copyOf)
      .filter((c) => c.from === "builder");
    assert.equal(handOver.length, 1, "the rootfs stage takes one file from the builder");
    const custom = "/opt/k8s/kubelet";
    for (const target of TARGETS) {
      for (const kubeletDir of [undefined, custom]) {
        const args = {
          TARGETARCH: TARGET_ARCH[target],
          ...(kubeletDir === undefined ? {} : { KUBELET_DIR: kubeletDir }),
        };
        const all: string[][] = [];
        const { root, finished } = await build(builder, args, async (root, calls) => {
          all.push(...calls);
          for (const call of calls) {
            // What the compile task does with these arguments: it writes outputPath(t) for each
            // target it parses (its --output, checked by the compile task tests below).
            assert.deepEqual(call.slice(0, 2), ["task", "compile"], call.join(" "));
            const options = parseCompileOptions(call.slice(2));
            assert.deepEqual(options.targets, [target]);
            assert.deepEqual(options.paths, kubeletDir === undefined ? {} : { kubeletDir });
            const out = join(root, "src", outputPath(target));
            await Deno.mkdir(dirname(out), { recursive: true });
            await Deno.writeTextFile(out, `binary for ${target}`);
          }
          return true;
        });
        try {
          assert.ok(finished, `the builder stage failed for ${target}`);
          assert.equal(
            all.length,
            1,
            "deno runs once, as the compile task: no second set of flags",
          );
          for (const source of handOver[0]?.sources ?? []) {
            assert.equal(await Deno.readTextFile(join(root, source)), `binary for ${target}`);
          }
        } finally {
          await Deno.remove(root, { recursive: true });
        }
      }
    }
    // An architecture the task does not know stops the build at the compile task.
    const { root, finished } = await build(builder, { TARGETARCH: "riscv64" }, (_, calls) => {
      assert.equal(calls.length, 1);
      assert.throws(() => parseCompileOptions(calls[0]?.slice(2) ?? []), RangeError);
      return false;
    });
    await Deno.remove(root, { recursive: true });
    assert.equal(finished, false);
  },
});

Deno.test("Containerfile: the builder runs on the pinned Deno image of the tested version", () => {
  const builder = stage("builder");
  assert.match(builder.from, /^denoland\/deno:(bin|debian)-\d+\.\d+\.\d+$/);
  assert.equal(builder.from.split("-").at(-1), Deno.version.deno, "image Deno != tested Deno");
  // One image for every well-known kubelet root unless a build argument names another.
  assert.equal(argDefaults(builder).get("KUBELET_DIR"), "", "no kubelet root by default");
});

Deno.test("Containerfile: every COPY takes what exists, from the project or an earlier stage", async () => {
  for (const [n, s] of STAGES.entries()) {
    for (const copy of instructions(s, "COPY").map(copyOf)) {
      if (copy.from === undefined) {
        for (const source of copy.sources) assert.ok(await exists(join(ROOT, source)), source);
      } else {
        const from = STAGES.findIndex((earlier) => earlier.name === copy.from);
        assert.ok(from >= 0 && from < n, `${copy.from} is not an earlier stage`);
      }
    }
  }
  // The rootfs stage runs the script it copied on the binary it took from the builder, and the
  // runtime takes the root that run makes.
  const rootfs = stage("rootfs");
  const copies = instructions(rootfs, "COPY").map(copyOf);
  const runs = instructions(rootfs, "RUN").map((i) => i.args.split(/\s+/));
  assert.equal(runs.length, 1);
  const [shell, script, into, binary] = runs[0] as string[];
  assert.equal(shell, "sh");
  assert.deepEqual(copies.find((c) => c.dest === script)?.sources, ["tools/rootfs.sh"]);
  assert.equal(copies.find((c) => c.dest === binary)?.from, "builder");
  const runtime = copyOf(instructions(STAGES.at(-1) as Stage, "COPY")[0] as Instruction);
  assert.deepEqual([runtime.from, runtime.sources, runtime.dest], ["rootfs", [`${into}/`], "/"]);
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

async function inRoot(root: string, argv: string[]): Promise<string> {
  const output = await new Deno.Command("/usr/sbin/chroot", {
    args: [root, ...argv],
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  assert.ok(output.success, `${argv.join(" ")} in the image root failed: ${text}`);
  return text;
}

Deno.test({
  name:
    "tools/rootfs.sh: the image root runs the binary and util-linux mount/umount at the allowlisted paths, and nothing else",
  ignore: Deno.uid() !== 0,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "spiffe-csi-rootfs-" });
    try {
      // This machine's deno stands in for the compiled binary: both link glibc the same way.
      const output = await new Deno.Command("sh", {
        args: [join(ROOT, "tools/rootfs.sh"), root, Deno.execPath()],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(output.success, new TextDecoder().decode(output.stderr));
      const tree = walk(root);
      const entrypoint = JSON.parse(
        STAGES.at(-1)!.instructions.find((i) => i.keyword === "ENTRYPOINT")!.args,
      ) as string[];
      const programs = [entrypoint[0]!, ...declaredPermissionSet().run].sort();
      assert.deepEqual(
        programs,
        [
          CONTAINER_PATHS.mountPath,
          CONTAINER_PATHS.umountPath,
          `/usr/local/bin/${BINARY_NAME}`,
        ].sort(),
      );
      // Outside the library directories, the only files are the three programs.
      const files = [...tree].filter(([, info]) => info.isFile).map(([path]) => path);
      const others = files.filter((path) => !/^\/(usr\/)?lib(64|x32)?\//.test(path));
      assert.deepEqual(others.sort(), programs);
      assert.ok(files.every((path) => !/(^|\/)(sh|bash|busybox|dash)$/.test(path)), "a shell");
      for (const [path, info] of tree) {
        assert.equal((info.mode ?? 0) & 0o6000, 0, `${path} is setuid or setgid`);
      }
      assert.equal(await Deno.readLink(`${root}${CONTAINER_PATHS.cwdLink}`), "/proc/self/cwd");
      // The template's directory: the root is read-only at run time, so the driver cannot make it.
      const template = await Deno.lstat(`${root}${CONTAINER_PATHS.templateDir}`);
      assert.ok(template.isDirectory && (template.mode ?? 0) % 0o1000 === 0o700);
      // Every program runs there: its libraries are complete.
      for (const tool of [CONTAINER_PATHS.mountPath, CONTAINER_PATHS.umountPath]) {
        assert.match(await inRoot(root, [tool, "-V"]), /util-linux/);
      }
      assert.match(await inRoot(root, [entrypoint[0]!, "--version"]), /^deno /);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("Containerfile: the runtime is scratch with the entrypoint, libraries and labels", () => {
  const runtime = STAGES.at(-1);
  assert.ok(runtime);
  assert.equal(runtime.from, "scratch");
  assert.equal(instructions(runtime, "COPY").length, 1, "the image root only");
  const entrypoint = runtime.instructions.find((i) => i.keyword === "ENTRYPOINT");
  assert.ok(entrypoint);
  const argv = JSON.parse(entrypoint.args) as string[];
  assert.equal(argv.length, 1);
  assert.equal(argv[0], `/usr/local/bin/${BINARY_NAME}`, "rootfs.sh puts the binary there");
  // The OCI labels an image built with the default build arguments carries.
  const defaults = argDefaults(runtime);
  const labels = Object.fromEntries(
    instructions(runtime, "LABEL").flatMap((i) => [...i.args.matchAll(/(\S+?)="([^"]*)"/g)])
      .map(([, key, value]) => [
        key,
        (value ?? "").replace(/\$\{(\w+)\}/g, (_, name: string) => defaults.get(name) ?? ""),
      ]),
  );
  assert.deepEqual(labels, {
    "org.opencontainers.image.title": BINARY_NAME,
    "org.opencontainers.image.description":
      "CSI node plugin that mounts the SPIFFE Workload API socket directory into pods",
    // The source is this project's, never upstream's repository.
    "org.opencontainers.image.source": "spiffe-csi-driver",
    "org.opencontainers.image.version": denoConfig.version,
    "org.opencontainers.image.licenses": "Apache-2.0",
  });
  assert.doesNotMatch(TEXT, /github\.com\/spiffe\//);
});

Deno.test("Containerfile: every base image is pinned to a release and multi-arch is wired", () => {
  for (const s of STAGES) {
    if (s.from === "scratch") continue;
    assert.match(s.from, /:[^:]*\d[^:]*$/, `${s.from} is not pinned to a version`);
    assert.doesNotMatch(s.from, /:latest$/);
  }
  // The builder runs on the build machine and cross-compiles for TARGETARCH; the rootfs stage
  // runs on the target, where ldd uses the target's loader.
  assert.equal(stage("builder").platform, "$BUILDPLATFORM");
  assert.ok(argDefaults(stage("builder")).has("TARGETARCH"));
  assert.equal(stage("rootfs").platform, undefined);
});

Deno.test("compile task: flags are the driver's permission set, V8 flags and nothing more", () => {
  for (const target of TARGETS) {
    const args = compileArgs(target);
    assert.equal(args[0], "compile");
    const perms = permissionFlags();
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

Deno.test("compile task: the image allows every well-known kubelet root; --kubelet-dir only its own", () => {
  const allowed = (args: string[], kind: string) =>
    args.filter((a) => a.startsWith(`--allow-${kind}=`)).flatMap((a) =>
      a.slice(a.indexOf("=") + 1).split(",")
    );
  const image = compileArgs("x86_64-unknown-linux-gnu");
  assert.deepEqual(parseCompileOptions([]).paths, {});
  for (const root of ["/var/lib/kubelet", MICROK8S, "/var/lib/k0s/kubelet"]) {
    assert.ok(allowed(image, "write").includes(`${root}/pods`), root);
  }
  for (const dir of ["/spiffe-workload-api", "/spire-agent-socket"]) {
    assert.ok(allowed(image, "read").includes(dir), dir);
    assert.ok(allowed(image, "net").includes(`unix:${dir}/api.sock`), dir);
  }

  const custom = "/opt/k8s/kubelet";
  const { targets, paths } = parseCompileOptions(["--target=amd64", `--kubelet-dir=${custom}`]);
  assert.deepEqual(targets, ["x86_64-unknown-linux-gnu"]);
  assert.deepEqual(paths, { kubeletDir: custom });
  const args = compileArgs("x86_64-unknown-linux-gnu", paths);
  const pods = allowed(args, "write").filter((p) => p.endsWith("/pods"));
  assert.deepEqual(pods, [`${custom}/pods`], "only the given root's pods dir");
  assert.deepEqual(allowed(args, "read"), allowed(args, "write"));
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

/** The compile task's run for amd64, with `env` added. */
async function compileTask(env: Record<string, string> = {}): Promise<Deno.CommandOutput> {
  return await new Deno.Command(Deno.execPath(), {
    args: ["task", "compile", "--target=amd64"],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
}

const AMD64 = "x86_64-unknown-linux-gnu";
// Where deno compile keeps the denort runtime it downloaded for a target.
const DENO_DIR = (JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
      .output()).stdout,
  ),
) as { denoDir: string }).denoDir;
const DENORT_CACHED = await exists(
  join(DENO_DIR, `dl/release/v${Deno.version.deno}/denort-${AMD64}.zip`),
);
const CAN_COMPILE = DENORT_CACHED || Deno.env.get("SPIFFE_CSI_COMPILE") === "1";

Deno.test({
  name: "compile task: builds a binary that prints the driver's version" +
    (CAN_COMPILE
      ? ""
      : " (ignored: deno compile needs Deno's denort runtime, which is not cached here; " +
        "set SPIFFE_CSI_COMPILE=1 where dl.deno.land is reachable)"),
  ignore: !CAN_COMPILE,
  async fn() {
    const output = await compileTask();
    assert.ok(output.success, new TextDecoder().decode(output.stderr));
    const binary = join(ROOT, outputPath(AMD64));
    const info = await Deno.stat(binary);
    assert.ok(info.isFile && info.size > 1_000_000 && ((info.mode ?? 0) & 0o111) !== 0);
    const version = await new Deno.Command(binary, { args: ["-version"], stdout: "piped" })
      .output();
    assert.ok(version.success);
    assert.match(new TextDecoder().decode(version.stdout), new RegExp(denoConfig.version));
  },
});

Deno.test({
  name: "compile task: when denort cannot be downloaded it stops with one clear line" +
    (DENORT_CACHED ? " (ignored: denort is cached, so its download cannot fail)" : ""),
  ignore: DENORT_CACHED,
  async fn() {
    // The download goes to a proxy that refuses, so it fails wherever this runs.
    const proxy = "http://127.0.0.1:9";
    const output = await compileTask({ HTTPS_PROXY: proxy, HTTP_PROXY: proxy, NO_PROXY: "" });
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 1, stderr);
    const ours = stderr.split("\n").filter((l) => l.startsWith("deno task compile:"));
    assert.deepEqual(ours, [
      `deno task compile: cannot fetch Deno's denort runtime for ${AMD64} (dl.deno.land is not ` +
      `reachable): compile on a machine with internet access`,
    ]);
    assert.doesNotMatch(stderr, /Stack backtrace|Caused by/, "the raw error is not dumped");
  },
});
