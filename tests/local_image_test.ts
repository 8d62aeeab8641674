/**
 * The local image (tools/local_image.ts): the release layout from tools/rootfs.sh --sources, whose
 * entrypoint runs the sources under exactly the compile task's permission set and V8 flags, from a
 * DENO_DIR that is only read at run time.
 */
import assert from "node:assert/strict";
import { compileArgs } from "../tools/compile.ts";
import { localImageEntrypoint, SOURCE_LAYOUT } from "../tools/local_image.ts";
import { declaredPermissionSet } from "../lib/config/permissions.ts";
import { REAL_MOUNTS, walk } from "./_env.ts";
import { ROOT } from "./_driver.ts";
import { runOk } from "./_spire.ts";

/** The flags that decide what the driver may do: permissions and V8's. */
function policyFlags(args: string[]): string[] {
  return args.filter((a) => /^--(allow|deny)-|^-A$|^--no-prompt$|^--v8-flags=/.test(a));
}

Deno.test("local image: the entrypoint grants exactly what the compiled binary is granted", () => {
  const entrypoint = localImageEntrypoint();
  assert.equal(entrypoint[0], SOURCE_LAYOUT.deno);
  assert.equal(entrypoint[1], "run");
  assert.equal(entrypoint.at(-1), `${SOURCE_LAYOUT.app}/main.ts`);
  assert.deepEqual(policyFlags(entrypoint), policyFlags(compileArgs("x86_64-unknown-linux-gnu")));
  // From the image's cache only, which it never writes.
  assert.ok(entrypoint.includes("--cached-only") && entrypoint.includes("--frozen"));
  assert.ok(!entrypoint.some((a) => a === "--allow-all" || a.startsWith("--allow-sys")));
});

Deno.test({
  name:
    "tools/rootfs.sh --sources: deno, mount and umount are all that runs; the driver starts from a read-only root",
  ignore: !REAL_MOUNTS,
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "spiffe-csi-rootfs-src-" });
    try {
      await runOk("sh", [`${ROOT}tools/rootfs.sh`, "--sources", root, Deno.execPath(), ROOT], {
        timeoutMs: 120_000,
      });
      const tree = walk(root);
      const executables = [...tree]
        .filter(([, info]) => info.isFile && ((info.mode ?? 0) & 0o111) !== 0)
        .map(([path]) => path)
        .filter((path) => !/^\/(usr\/)?lib(64|x32)?\//.test(path));
      assert.deepEqual(
        executables.sort(),
        [SOURCE_LAYOUT.deno, ...declaredPermissionSet().run].sort(),
      );
      for (const [path, info] of tree) {
        if (info.isFile) {
          assert.ok(!/(^|\/)(sh|bash|busybox|dash|node)$/.test(path), `${path}: a shell`);
        }
        assert.equal((info.mode ?? 0) & 0o6000, 0, `${path} is setuid or setgid`);
      }
      // The sources without their tests, and a DENO_DIR holding only npm packages.
      const app = [...tree.keys()].filter((p) => p.startsWith(`${SOURCE_LAYOUT.app}/`));
      assert.ok(app.includes(`${SOURCE_LAYOUT.app}/main.ts`));
      assert.ok(app.includes(`${SOURCE_LAYOUT.app}/deno.lock`));
      assert.ok(!app.some((p) => p.endsWith("_test.ts")), "tests in the image");
      const cacheDirs = [...Deno.readDirSync(`${root}${SOURCE_LAYOUT.denoDir}`)].map((e) => e.name);
      assert.deepEqual(cacheDirs, ["npm"]);

      // Read-only, with only /proc mounted (as a container gets it), no network, no HOME.
      await Deno.mkdir(`${root}/proc`);
      await runOk("/usr/bin/mount", ["--bind", root, root]);
      await runOk("/usr/bin/mount", ["-o", "remount,bind,ro", root]);
      await runOk("/usr/bin/mount", ["-t", "proc", "proc", `${root}/proc`]);
      try {
        const output = await new Deno.Command("/usr/sbin/chroot", {
          args: [root, ...localImageEntrypoint(), "-version"],
          clearEnv: true,
          env: { DENO_DIR: SOURCE_LAYOUT.denoDir, DENO_NO_UPDATE_CHECK: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = new TextDecoder().decode(output.stderr);
        assert.ok(output.success, stderr);
        assert.match(new TextDecoder().decode(output.stdout), /^spiffe-csi-driver \d+\.\d+\.\d+/);
      } finally {
        await runOk("/usr/bin/umount", [`${root}/proc`]);
        await runOk("/usr/bin/umount", [root]);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
