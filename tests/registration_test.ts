// deno-lint-ignore-file no-console
// Built-in registration on the real driver process, under its permission set, with a client that
// calls the registration socket exactly as kubelet's plugin watcher does.
import assert from "node:assert/strict";
import { type DriverProcess, startDriver } from "./_driver.ts";
import { exists, makeTempTree, type TempTree, waitFor } from "./_env.ts";
import { RegistrationClient } from "./_registration_client.ts";

const HOST_ENDPOINT = "/var/lib/kubelet/plugins/csi.spiffe.io/csi.sock";

function withRegistration(
  fn: (tree: TempTree, driver: DriverProcess, socket: string) => Promise<void>,
): () => Promise<void> {
  return async () => {
    const tree = await makeTempTree();
    const registrationDir = `${tree.root}/plugins_registry`;
    await Deno.mkdir(registrationDir);
    const driver = await startDriver({
      ...tree,
      flags: [
        `-kubelet-registration-path=${HOST_ENDPOINT}`,
        `-plugin-registration-path=${registrationDir}`,
      ],
    });
    try {
      await fn(tree, driver, `${registrationDir}/csi.spiffe.io-reg.sock`);
    } catch (error) {
      console.error(driver.logs());
      throw error;
    } finally {
      await driver.stop("SIGKILL");
      await tree.remove();
    }
  };
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

test(
  "built-in registration: GetInfo on <dir>/<name>-reg.sock names the plugin and the host endpoint",
  withRegistration(async (_tree, driver, socket) => {
    const info = await Deno.lstat(socket);
    assert.ok(info.isSocket);
    assert.equal((info.mode ?? 0) & 0o777, 0o600, "only kubelet (root) may connect");
    const client = new RegistrationClient(socket);
    try {
      assert.deepEqual(await client.getInfo(), {
        type: "CSIPlugin",
        name: "csi.spiffe.io",
        endpoint: HOST_ENDPOINT,
        supported_versions: ["1.0.0"],
      });
      await client.notify(true);
    } finally {
      client.close();
    }
    // A successful registration is logged and the driver keeps serving.
    await waitFor(
      "the registration log line",
      () => driver.logs().includes("Registered with kubelet") || undefined,
      10_000,
      20,
    );
    const stopped = await driver.stop("SIGTERM");
    assert.equal(stopped.code, 0);
    assert.equal(await exists(socket), false, "the registration socket is removed at stop");
  }),
);

test(
  "built-in registration: a registration kubelet refuses is logged and ends the driver with 1",
  withRegistration(async (tree, driver, socket) => {
    const client = new RegistrationClient(socket);
    try {
      await client.notify(false, "plugin csi.spiffe.io: unsupported versions");
    } finally {
      client.close();
    }
    const status = await driver.child.status;
    assert.equal(status.code, 1);
    await driver.stop();
    const refusal = driver.logs().split("\n").find((line) => line.includes("refused"));
    assert.ok(refusal?.includes("unsupported versions"), driver.logs());
    assert.equal(await exists(socket), false, "the registration socket is removed");
    assert.equal(await exists(tree.csiSocketPath), false, "the CSI socket is removed");
  }),
);

test("without -kubelet-registration-path the driver serves no registration socket", async () => {
  const tree = await makeTempTree();
  const registrationDir = `${tree.root}/plugins_registry`;
  await Deno.mkdir(registrationDir);
  const driver = await startDriver({
    ...tree,
    flags: [`-plugin-registration-path=${registrationDir}`],
  });
  try {
    assert.deepEqual(await Array.fromAsync(Deno.readDir(registrationDir)), []);
  } finally {
    await driver.stop("SIGKILL");
    await tree.remove();
  }
});
