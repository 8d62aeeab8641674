/** CSI Identity service: plain handlers, no gRPC types. */
import type { Empty, GetPluginInfoResponse, ProbeResponse } from "./types.ts";

/** Options for createIdentityService. */
export interface IdentityOptions {
  pluginName: string;
  version: string;
  /** Whether the driver can serve (e.g. the Workload API socket dir is readable). */
  ready: () => Promise<boolean>;
}

/** The Identity service's handlers. */
export interface IdentityService {
  GetPluginInfo(request: Empty): Promise<GetPluginInfoResponse>;
  GetPluginCapabilities(request: Empty): Promise<{ capabilities: never[] }>;
  Probe(request: Empty): Promise<ProbeResponse>;
}

/** Creates the Identity service. A node-only plugin: no plugin capabilities, as upstream. */
export function createIdentityService(options: IdentityOptions): IdentityService {
  return {
    GetPluginInfo() {
      return Promise.resolve({ name: options.pluginName, vendor_version: options.version });
    },
    GetPluginCapabilities() {
      return Promise.resolve({ capabilities: [] });
    },
    async Probe() {
      return { ready: { value: await options.ready() } };
    },
  };
}
