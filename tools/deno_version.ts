/**
 * The one Deno release the driver runs on. 2.9.4 to 2.9.6 abort inside node:http2 when a gRPC
 * client that made a few hundred calls disconnects (denoland/deno#36788), which kubelet and
 * node-driver-registrar do. Run as a script, it exits 1 with one line on any other Deno.
 */

/** The Deno version the start task, the tests and the image use (`npm install -g deno@<it>`). */
export const DENO_VERSION = "2.9.3";

/** The one line that refuses `version`, or undefined when it is the pinned one. */
export function wrongDeno(version: string): string | undefined {
  if (version === DENO_VERSION) return undefined;
  return `spiffe-csi-driver: Deno ${version} is not ${DENO_VERSION}: 2.9.4 to 2.9.6 abort in ` +
    `node:http2 under gRPC load; install it with npm install -g deno@${DENO_VERSION}`;
}

if (import.meta.main) {
  const refusal = wrongDeno(Deno.version.deno);
  if (refusal !== undefined) {
    Deno.stderr.writeSync(new TextEncoder().encode(`${refusal}\n`));
    Deno.exit(1);
  }
}
