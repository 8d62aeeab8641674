// deno-lint-ignore-file no-console
/** The commands the README and docs/ tell a user to run, checked (or run) as written. */
import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import denoConfig from "../deno.json" with { type: "json" };
import { startDriver } from "./_driver.ts";
import { mountTable, REAL_MOUNTS, unmountUnder } from "./_env.ts";
import { run } from "./_spire.ts";
import { ROOT } from "./_driver.ts";

const GRPCURL = join(ROOT, ".tools", "bin", "grpcurl");
const HAS_GRPCURL = await Deno.stat(GRPCURL).then((i) => i.isFile, () => false);
const README = await Deno.readTextFile(join(ROOT, "README.md"));

/** The fenced `sh` blocks of a Markdown text. */
function shellBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1] as string);
}

/**
 * The directories a block's `-k DIR` / `kubectl kustomize DIR` / `kustomize edit` act on, following
 * `cd` as the shell does: a `cd` lasts for the rest of the block, except inside `( ... )`.
 */
function kustomizeDirs(block: string, root: string): { dir: string; line: string }[] {
  const found: { dir: string; line: string }[] = [];
  let cwd = root;
  for (const raw of block.split("\n")) {
    const line = raw.replace(/\s+#.*$/, "").trim();
    const subshell = /^\((.*)\)$/.exec(line);
    let here = cwd;
    for (const part of (subshell?.[1] ?? line).split(/&&|;/).map((p) => p.trim())) {
      const cd = /^cd\s+(\S+)$/.exec(part);
      if (cd) here = resolve(here, cd[1] as string);
      const k = /(?:\s-k\s+|^kubectl kustomize\s+)(\S+)/.exec(part);
      if (k) found.push({ dir: resolve(here, k[1] as string), line: raw });
      if (/^kustomize edit\b/.test(part)) found.push({ dir: here, line: raw });
    }
    if (!subshell) cwd = here;
  }
  return found;
}

Deno.test("docs: every kustomize directory in a shell block exists from where the block is then", async () => {
  const docs = [join(ROOT, "README.md")];
  for await (const entry of Deno.readDir(join(ROOT, "docs"))) {
    if (entry.name.endsWith(".md")) docs.push(join(ROOT, "docs", entry.name));
  }
  let checked = 0;
  for (const file of docs) {
    for (const block of shellBlocks(await Deno.readTextFile(file))) {
      for (const { dir, line } of kustomizeDirs(block, ROOT)) {
        checked++;
        const ok = await Deno.stat(join(dir, "kustomization.yaml")).then(() => true, () => false);
        assert.ok(ok, `${file}: ${line.trim()}: no kustomization in ${dir}`);
      }
    }
  }
  assert.ok(checked >= 4, `only ${checked} kustomize commands found`);
});

Deno.test("docs: the kustomize directory check follows cd, and not out of a subshell", () => {
  const block =
    "cd manifests/base && kustomize edit set image x=y\nkubectl apply -k manifests/base\n";
  assert.deepEqual(kustomizeDirs(block, "/r").map((d) => d.dir), [
    "/r/manifests/base",
    "/r/manifests/base/manifests/base",
  ]);
  const fixed =
    "(cd manifests/base && kustomize edit set image x=y)\nkubectl apply -k manifests/base\n";
  assert.deepEqual(kustomizeDirs(fixed, "/r").map((d) => d.dir), [
    "/r/manifests/base",
    "/r/manifests/base",
  ]);
});

Deno.test({
  name: "README: the grpcurl example runs as written against `deno task local`'s driver",
  ignore: !REAL_MOUNTS || !HAS_GRPCURL,
  async fn() {
    assert.doesNotMatch(README, /grpcurl[^\n`]*\s-unix\s/, "grpcurl 1.9 rejects -unix PATH");
    const block = shellBlocks(README).find((b) => b.includes("grpcurl"));
    assert.ok(block, "README has no shell block with grpcurl");
    assert.match(block, /NodePublishVolume/);
    assert.match(block, /NodeUnpublishVolume/);
    // The local task's paths, moved to a fresh directory (another local run may own /tmp/spiffe-csi).
    const local = "/tmp/spiffe-csi";
    assert.ok(denoConfig.tasks.local.includes(`${local}/`) && block.includes(`${local}/`));
    const root = await Deno.makeTempDir({ prefix: "spiffe-csi-readme-" });
    const flags = denoConfig.tasks.local.replace(/^deno task start /, "").replaceAll(local, root)
      .split(/\s+/);
    const value = (name: string) =>
      (flags.find((f) => f.startsWith(`-${name}=`)) ?? "").slice(name.length + 2);
    const socketDir = value("workload-api-socket-dir");
    await Deno.mkdir(socketDir, { recursive: true });
    await Deno.mkdir(`${value("kubelet-dir")}/pods`, { recursive: true });
    // The start task makes the link; startDriver runs the driver directly.
    await Deno.symlink("/proc/self/cwd", value("cwd-link"));
    const listener = Deno.listen({ transport: "unix", path: `${socketDir}/api.sock` });
    const driver = await startDriver({
      socketDir,
      csiSocketPath: value("csi-socket-path"),
      kubeletDir: value("kubelet-dir"),
      cwdLink: value("cwd-link"),
      flags: flags.filter((f) =>
        !/^-(workload-api-socket-dir|csi-socket-path|kubelet-dir|cwd-link)=/.test(f)
      ),
    });
    try {
      const result = await run("sh", ["-eu", "-c", block.replaceAll(local, root)], {
        cwd: ROOT,
        env: { PATH: `${join(ROOT, ".tools", "bin")}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` },
      });
      assert.equal(result.code, 0, `${result.stdout}${result.stderr}\n${driver.logs()}`);
      assert.match(result.stdout, /"name": "csi\.spiffe\.io"/);
      assert.match(result.stdout, /\bapi\.sock\b/, "the socket is visible through the target");
      // Stopped as Ctrl-C stops `deno task local`: the template goes with the driver.
      assert.equal((await driver.stop("SIGINT")).code, 0);
      assert.deepEqual(
        (await mountTable()).filter((e) => e.target.startsWith(`${root}/`)),
        [],
        "the unpublish or the stop left a mount",
      );
    } catch (error) {
      console.error(driver.logs());
      throw error;
    } finally {
      listener.close();
      await driver.stop("SIGKILL");
      await unmountUnder(root);
      await Deno.remove(root, { recursive: true });
    }
  },
});

Deno.test("one Deno version: the start task and the tests refuse another, and every install line names it", async () => {
  const { DENO_VERSION, wrongDeno } = await import("../tools/deno_version.ts");
  assert.equal(wrongDeno(DENO_VERSION), undefined);
  for (const other of ["2.9.4", "2.9.6", "2.10.0"]) {
    assert.match(wrongDeno(other) ?? "", new RegExp(`^spiffe-csi-driver: Deno ${other} is not `));
  }
  const installs = [README, await Deno.readTextFile(join(ROOT, ".ci", "run"))]
    .flatMap((text) => [...text.matchAll(/deno@([0-9.]+)/g)].map((m) => m[1]));
  assert.ok(installs.length >= 3, "install lines");
  assert.deepEqual([...new Set(installs)], [DENO_VERSION]);
  const containerfile = await Deno.readTextFile(join(ROOT, "Containerfile"));
  assert.ok(containerfile.includes(`denoland/deno:debian-${DENO_VERSION}`));
  // The check the test task runs first passes on the pinned Deno.
  const checked = await new Deno.Command(Deno.execPath(), {
    args: ["run", join(ROOT, "tools", "deno_version.ts")],
  }).output();
  assert.equal(checked.code, 0);
});
