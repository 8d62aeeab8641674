import assert from "node:assert/strict";
import { ConfigError, invocationArgs, parseInvocation, usage } from "./flags.ts";

const env = (vars: Record<string, string>) => ({ getEnv: (name: string) => vars[name] });

Deno.test("parseInvocation() accepts every flag form Go's flag package accepts", () => {
  const forms = [
    ["-workload-api-socket-dir", "/run/s", "-node-id", "n1"],
    ["-workload-api-socket-dir=/run/s", "-node-id=n1"],
    ["--workload-api-socket-dir", "/run/s", "--node-id", "n1"],
    ["--workload-api-socket-dir=/run/s", "--node-id=n1"],
  ];
  for (const args of forms) {
    const invocation = parseInvocation(args);
    assert.equal(invocation.command, "run", args.join(" "));
    if (invocation.command !== "run") continue;
    assert.equal(invocation.config.socketDir, "/run/s");
    assert.equal(invocation.config.nodeId, "n1");
  }
});

Deno.test("parseInvocation() uses upstream's defaults", () => {
  const invocation = parseInvocation(
    ["-workload-api-socket-dir=/s"],
    env({ MY_NODE_NAME: "node-a" }),
  );
  assert.equal(invocation.command, "run");
  if (invocation.command !== "run") return;
  assert.deepEqual(invocation.config, {
    nodeId: "node-a",
    nodeIdEnv: "MY_NODE_NAME",
    pluginName: "csi.spiffe.io",
    socketDir: "/s",
    csiSocketPath: "/spiffe-csi/csi.sock",
    kubeletDir: "/var/lib/kubelet",
    mountPath: "/usr/bin/mount",
    umountPath: "/usr/bin/umount",
    cwdLink: "/run/spiffe-csi-driver/cwd",
    templateDir: "/run/spiffe-csi-driver/socket-dir",
    logLevel: "info",
    logFormat: "json",
    pruneStackedMounts: false,
    socketNames: ["api.sock", "spire-agent.sock", "agent.sock", "socket"],
  });
});

Deno.test("parseInvocation() reads the node id from -node-id-env, and -node-id overrides it", () => {
  const fromEnv = parseInvocation(
    ["-workload-api-socket-dir=/s", "-node-id-env=NODE"],
    env({ NODE: "from-env", MY_NODE_NAME: "wrong" }),
  );
  assert.equal(fromEnv.command === "run" && fromEnv.config.nodeId, "from-env");
  const flag = parseInvocation(
    ["-workload-api-socket-dir=/s", "-node-id=flag"],
    env({ MY_NODE_NAME: "env" }),
  );
  assert.equal(flag.command === "run" && flag.config.nodeId, "flag");
});

Deno.test("parseInvocation() takes Go-style boolean values", () => {
  for (
    const [arg, expected] of [
      ["-prune-stacked-mounts", true],
      ["-prune-stacked-mounts=true", true],
      ["--prune-stacked-mounts=false", false],
    ] as const
  ) {
    const invocation = parseInvocation(["-workload-api-socket-dir=/s", "-node-id=n", arg]);
    assert.equal(
      invocation.command === "run" && invocation.config.pruneStackedMounts,
      expected,
      arg,
    );
  }
});

Deno.test("parseInvocation() answers -h, --help and --version", () => {
  for (const arg of ["-h", "--help", "-help"]) {
    const invocation = parseInvocation([arg]);
    assert.equal(invocation.command, "help");
    assert.match(invocation.command === "help" ? invocation.text : "", /-workload-api-socket-dir/);
  }
  const version = parseInvocation(["--version"]);
  assert.match(
    version.command === "version" ? version.text : "",
    /^spiffe-csi-driver \d+\.\d+\.\d+/,
  );
  assert.match(usage(), /-csi-socket-path string\n.*\(default "\/spiffe-csi\/csi.sock"\)/);
});

Deno.test("parseInvocation() rejects bad input with one clear line", () => {
  const cases: [string[], RegExp][] = [
    [["-node-id=n"], /^-workload-api-socket-dir is required$/],
    [["-workload-api-socket-dir=/s"], /^node ID is required: set -node-id or the MY_NODE_NAME/],
    [
      ["-workload-api-socket-dir=/s", "-node-id=n", "-bogus"],
      /^flag provided but not defined: -bogus$/,
    ],
    [["-workload-api-socket-dir=/s", "-node-id"], /^flag needs an argument: -node-id$/],
    [["-workload-api-socket-dir=rel", "-node-id=n"], /must be an absolute path: "rel"/],
    [["-workload-api-socket-dir=/a,b", "-node-id=n"], /must not contain NUL, newline or comma/],
    [["-workload-api-socket-dir=/s", "-node-id=n", "-log-level=loud"], /-log-level must be one of/],
    [
      ["-workload-api-socket-dir=/s", "-node-id=n", "-log-format=xml"],
      /-log-format must be one of/,
    ],
    [["-workload-api-socket-dir=/s", "-node-id=n", "-plugin-name=-bad"], /-plugin-name must be/],
    [["-workload-api-socket-dir=/s", "-node-id=n", "-node-id-env=A-B"], /-node-id-env must be/],
    [["-workload-api-socket-dir=/s", "-node-id=n", "run"], /^unexpected argument: run$/],
    [["-workload-api-socket-dir=/s", "-node-id=n", "-x"], /^flag provided but not defined: -x$/],
    [
      ["-workload-api-socket-dir=/s", "-node-id=n", "-prune-stacked-mounts=yes"],
      /^invalid boolean value "yes" for -prune-stacked-mounts$/,
    ],
    [["-workload-api-socket-dir=/s", "-node-id=n", "--", "-log-level=x"], /^unexpected argument/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseInvocation(args), (error: unknown) => {
      assert.ok(error instanceof ConfigError, args.join(" "));
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"), "one line");
      return true;
    });
  }
});

Deno.test("parseInvocation() resolves relative paths only when given a working directory", () => {
  const invocation = parseInvocation(["-workload-api-socket-dir=agent", "-node-id=n"], {
    cwd: "/w",
  });
  assert.equal(invocation.command === "run" && invocation.config.socketDir, "/w/agent");
});

Deno.test("parseInvocation() recognizes the diagnose subcommand", () => {
  const invocation = parseInvocation([
    "diagnose",
    "-workload-api-socket-dir=/s",
    "-node-id=n",
    "-registration-dir=/reg",
  ]);
  assert.equal(invocation.command, "diagnose");
  assert.equal(invocation.command === "diagnose" && invocation.registrationDir, "/reg");
});

Deno.test("invocationArgs() of a run round-trips through parseInvocation()", () => {
  const first = parseInvocation([
    "-workload-api-socket-dir=/s",
    "-node-id=n",
    "-kubelet-dir=/var/snap/microk8s/common/var/lib/kubelet",
    "-log-level=debug",
    "-prune-stacked-mounts",
  ]);
  assert.equal(first.command, "run");
  if (first.command !== "run") return;
  const second = parseInvocation(invocationArgs({ command: "run", config: first.config }));
  assert.deepEqual(second, first);
});

Deno.test("invocationArgs() re-creates every flag of the table, diagnose's included", () => {
  const args = [
    "diagnose",
    "-workload-api-socket-dir=/s",
    "-csi-socket-path=/c/csi.sock",
    "-node-id=n",
    "-node-id-env=NODE",
    "-plugin-name=example.org",
    "-workload-api-socket-names=a.sock,b.sock",
    "-kubelet-dir=/k",
    "-log-level=warn",
    "-log-format=text",
    "-prune-stacked-mounts",
    "-mount-path=/m/mount",
    "-umount-path=/m/umount",
    "-cwd-link=/l/cwd",
    "-kubelet-registration-path=/var/lib/kubelet/plugins/example.org/csi.sock",
    "-plugin-registration-path=/reg",
    "-registration-dir=/var/lib/kubelet/plugins_registry",
  ];
  const first = parseInvocation(args);
  assert.equal(first.command, "diagnose");
  if (first.command !== "diagnose") return;
  const again = invocationArgs(first);
  assert.deepEqual(parseInvocation(again), first);
  const named = (list: string[]) => list.map((a) => /^-+([a-z-]+)/.exec(a)?.[1]).filter(Boolean);
  const inUsage = [...usage().matchAll(/^ {2}-([a-z-]+)/gm)].map((m) => m[1]);
  assert.deepEqual(
    named(again).sort(),
    inUsage.filter((name) => name !== "help" && name !== "version").sort(),
    "each flag in the usage text is set again on a re-start",
  );
});
