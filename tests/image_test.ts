// deno-lint-ignore-file no-console
/**
 * The driver as the image runs it: under the image's permission set (every well-known container
 * layout, lib/config/permissions.ts), with the arguments other deployments pass. The container's file
 * system is a chroot built inside tests/run.sh's private mount namespace, so the container paths
 * (/spire-agent-socket, /spiffe-csi, /var/lib/kubelet/pods) exist without touching the host's.
 */
import assert from "node:assert/strict";
import { type Config, parseInvocation, withoutTrailingSlash } from "../lib/config/flags.ts";
import { CONTAINER_PATHS, permissionFlags, V8_FLAGS } from "../lib/config/permissions.ts";
import { dirname } from "node:path";
import { type DriverProcess, ROOT, spawnDriver } from "./_driver.ts";
import { CsiClient, publishRequest } from "./_csi_client.ts";
import { mountTable, REAL_MOUNTS } from "./_env.ts";
import { runOk } from "./_spire.ts";
import { HARDENED_CHART_ARGS } from "./_kube_manifests.ts";

const ENTRY = `${ROOT}main.ts`;

/** `deno run` under the image's permission set, as the compiled binary runs. */
function imageRunArgs(driverArgs: string[]): string[] {
  return ["run", ...permissionFlags(), `--v8-flags=${V8_FLAGS}`, ENTRY, ...driverArgs];
}

function configOf(args: string[], nodeId: string): Config {
  const invocation = parseInvocation(args, { getEnv: () => nodeId });
  assert.equal(invocation.command, "run");
  return (invocation as { config: Config }).config;
}

/**
 * A root file system for chroot: the host's /usr, /etc, /dev, /proc, Deno's cache and the
 * project, with kubelet's pods dir at `<kubeletRoot>/pods`, as the chart's `kubeletPath` puts it.
 */
async function makeContainerRoot(
  kubeletRoot = "/var/lib/kubelet",
): Promise<{ root: string; remove(): Promise<void> }> {
  const root = await Deno.makeTempDir({ prefix: "spiffe-csi-image-" });
  const denoDir = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME") ?? "/root"}/.cache/deno`;
  const binds = ["/usr", "/etc", "/dev", "/proc", denoDir, withoutTrailingSlash(ROOT)];
  for (const name of ["bin", "lib", "lib64", "sbin"]) {
    const link = await Deno.readLink(`/${name}`).catch(() => undefined);
    if (link !== undefined) await Deno.symlink(link, `${root}/${name}`);
  }
  for (const source of binds) {
    await Deno.mkdir(`${root}${source}`, { recursive: true });
    await runOk("/usr/bin/mount", ["--rbind", source, `${root}${source}`]);
  }
  for (const dir of ["/spire-agent-socket", "/spiffe-csi", `${kubeletRoot}/pods`, "/tmp"]) {
    await Deno.mkdir(`${root}${dir}`, { recursive: true });
  }
  // The image ships the driver's -cwd-link and its template's directory (tools/rootfs.sh).
  await Deno.mkdir(`${root}${dirname(CONTAINER_PATHS.cwdLink)}`, { recursive: true });
  await Deno.symlink("/proc/self/cwd", `${root}${CONTAINER_PATHS.cwdLink}`);
  await Deno.mkdir(`${root}${CONTAINER_PATHS.templateDir}`, { mode: 0o700 });
  return {
    root,
    async remove() {
      // Whatever the driver left mounted, then the binds (submounts first).
      const targets = (await mountTable()).map((e) => e.target).filter((t) =>
        t.startsWith(`${root}/`)
      );
      for (const target of [...new Set(targets)].reverse()) {
        await new Deno.Command("/usr/bin/umount", { args: ["--lazy", target] }).output();
      }
      await Deno.remove(root, { recursive: true });
    },
  };
}

for (
  const kubeletRoot of ["/var/lib/kubelet", "/var/snap/microk8s/common/var/lib/kubelet"]
) {
  Deno.test({
    name:
      `the image's permission set serves the hardened chart's exact args: publish and unpublish under ${kubeletRoot}/pods`,
    ignore: !REAL_MOUNTS,
    async fn() {
      // The chart passes no -kubelet-dir: its kubeletPath only moves the pods dir's mount.
      const container = await makeContainerRoot(kubeletRoot);
      const { root } = container;
      let driver: DriverProcess | undefined;
      let client: CsiClient | undefined;
      try {
        driver = await spawnDriver({
          config: configOf(HARDENED_CHART_ARGS, "node-1"),
          command: "/usr/sbin/chroot",
          args: [root, Deno.execPath(), ...imageRunArgs(HARDENED_CHART_ARGS)],
          env: { MY_NODE_NAME: "node-1" },
          probeSocket: `${root}/spiffe-csi/csi.sock`,
          waitReady: true,
        });
        client = new CsiClient(`${root}/spiffe-csi/csi.sock`);
        const info = await client.ok<{ node_id: string }>("NodeGetInfo");
        assert.equal(info.node_id, "node-1", "the node id comes from MY_NODE_NAME");
        const listener = Deno.listen({
          transport: "unix",
          path: `${root}/spire-agent-socket/api.sock`,
        });
        try {
          const uid = "0b5e0e9c-6a43-4f0b-9b3c-2f6f1b8a7d10";
          const parent = `${kubeletRoot}/pods/${uid}/volumes/kubernetes.io~csi/spiffe`;
          await Deno.mkdir(`${root}${parent}`, { recursive: true, mode: 0o750 });
          const target = `${parent}/mount`;
          await client.ok(
            "NodePublishVolume",
            publishRequest(target, {
              volume_context: {
                "csi.storage.k8s.io/ephemeral": "true",
                "csi.storage.k8s.io/pod.uid": uid,
              },
            }),
          );
          const accepted = listener.accept();
          accepted.catch(() => {}); // rejected only when the connect below failed
          // The full path is longer than a socket address may be: connect through a short link.
          await Deno.symlink(`${root}${target}`, `${root}/t`);
          const conn = await Deno.connect({ transport: "unix", path: `${root}/t/api.sock` });
          (await accepted).close();
          conn.close();
          await client.ok("NodeUnpublishVolume", {
            volume_id: "csi-0123456789abcdef",
            target_path: target,
          });
          await assert.rejects(Deno.stat(`${root}${target}`), Deno.errors.NotFound);
          const left = (await mountTable()).filter((e) => e.target.startsWith(`${root}/var/`));
          assert.deepEqual(left, []);
        } finally {
          listener.close();
        }
      } catch (error) {
        console.error(driver?.logs(), error);
        throw error;
      } finally {
        client?.close();
        await driver?.stop("SIGKILL");
        await container.remove();
      }
    },
  });
}

Deno.test({
  name:
    "under the image's permission set, paths it does not grant are refused at start, one line each",
  async fn() {
    const root = await Deno.makeTempDir({ prefix: "spiffe-csi-image-" });
    try {
      await Deno.mkdir(`${root}/agent`);
      const args = [
        `-workload-api-socket-dir=${root}/agent`,
        `-csi-socket-path=${root}/csi/csi.sock`,
        `-kubelet-dir=${root}/kubelet`,
        "-node-id=node-1",
      ];
      const child = new Deno.Command(Deno.execPath(), {
        args: imageRunArgs(args),
        cwd: ROOT,
        clearEnv: true,
        env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      // The old driver started silently: give it a deadline instead of waiting forever.
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      const output = await child.output();
      clearTimeout(timer);
      const stderr = new TextDecoder().decode(output.stderr);
      assert.equal(output.code, 2, stderr);
      const outside = "is outside the driver's permission set";
      assert.deepEqual(stderr.split("\n").filter((l) => l !== ""), [
        `spiffe-csi-driver: -workload-api-socket-dir: ${root}/agent ${outside} (read, write)`,
        `spiffe-csi-driver: -csi-socket-path: ${root}/csi/csi.sock ${outside} (read, write, net)`,
        `spiffe-csi-driver: -kubelet-dir: ${root}/kubelet/pods ${outside} (read, write)`,
      ]);
      assert.equal(new TextDecoder().decode(output.stdout), "");
      // Nothing was created.
      const entries = [];
      for await (const entry of Deno.readDir(root)) entries.push(entry.name);
      assert.deepEqual(entries, ["agent"]);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
