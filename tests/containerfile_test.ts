/**
 * The Containerfile and the compile task, checked against the rest of the project: the binary is
 * built by `deno task compile` with the one permission set, and the image root that
 * tools/rootfs.sh builds holds exactly the entrypoint and util-linux mount/umount, and runs them.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
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
import { walk } from "./_env.ts";

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

const MICROK8S = "/var/snap/microk8s/common/var/lib/kubelet";

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

Deno.test("Containerfile: the builder runs deno task compile on the pinned Deno image", () => {
  const builder = stage("builder");
  assert.match(builder.from, /^denoland\/deno:(bin|debian)-\d+\.\d+\.\d+$/);
  assert.equal(builder.from.split("-").at(-1), Deno.version.deno, "image Deno != tested Deno");
  const script = runs(builder);
  // One image for every well-known kubelet root; the build argument is for any other root.
  assert.match(
    script,
    /\bdeno task compile --target="\$\{TARGETARCH\}" \$\{KUBELET_DIR:\+--kubelet-dir="\$\{KUBELET_DIR\}"\}/,
  );
  const arg = builder.instructions.find((i) =>
    i.keyword === "ARG" && /^KUBELET_DIR\b/.test(i.args)
  );
  assert.equal(arg?.args, "KUBELET_DIR=", "no kubelet root by default");
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
  assert.match(runs(stage("rootfs")), new RegExp(`rootfs.sh /rootfs /out/${BINARY_NAME}$`));
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
  const copies = runtime.instructions.filter((i) => i.keyword === "COPY").map((i) => i.args);
  assert.deepEqual(copies, ["--from=rootfs /rootfs/ /"]);
  const entrypoint = runtime.instructions.find((i) => i.keyword === "ENTRYPOINT");
  assert.ok(entrypoint);
  const argv = JSON.parse(entrypoint.args) as string[];
  assert.equal(argv.length, 1);
  assert.equal(argv[0], `/usr/local/bin/${BINARY_NAME}`, "rootfs.sh puts the binary there");
  // OCI labels.
  const labels = runtime.instructions.filter((i) => i.keyword === "LABEL").map((i) => i.args)
    .join(" ");
  assert.match(labels, /org\.opencontainers\.image\.source="\$\{SOURCE\}"/);
  // The source is this project's, never upstream's repository.
  const source = runtime.instructions.find((i) => i.keyword === "ARG" && /^SOURCE=/.test(i.args));
  assert.equal(source?.args, "SOURCE=spiffe-csi-driver");
  assert.doesNotMatch(TEXT, /github\.com\/spiffe\//);
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
