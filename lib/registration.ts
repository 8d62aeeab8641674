/**
 * Built-in kubelet plugin registration (what node-driver-registrar does, without its container):
 * the handlers of `pluginregistration.Registration` v1, served on `<dir>/<plugin-name>-reg.sock`.
 * Plain handlers, no gRPC types; lib/server.ts serves them.
 */

/** kubelet's InfoRequest (empty). */
export type InfoRequest = Record<string, never>;

/** What the driver tells kubelet about itself. */
export interface PluginInfo {
  type: string;
  name: string;
  endpoint: string;
  supported_versions: string[];
}

/** kubelet's verdict on the registration. */
export interface RegistrationStatus {
  plugin_registered: boolean;
  error: string;
}

/** The Registration service's handlers. */
export interface RegistrationService {
  GetInfo(request: InfoRequest): Promise<PluginInfo>;
  NotifyRegistrationStatus(request: RegistrationStatus): Promise<Record<string, never>>;
}

/** Options for createRegistrationService. */
export interface RegistrationOptions {
  pluginName: string;
  /** The host path of the driver's CSI socket: kubelet dials it (`-kubelet-registration-path`). */
  endpoint: string;
  /** Called once per verdict kubelet reports; `error` is set when kubelet refused the plugin. */
  onStatus: (status: { registered: boolean; error: string }) => void;
}

/** The CSI versions this driver speaks, as kubelet's CSI plugin expects them. */
export const SUPPORTED_VERSIONS: readonly string[] = Object.freeze(["1.0.0"]);

/** Creates the Registration service's handlers. */
export function createRegistrationService(options: RegistrationOptions): RegistrationService {
  return {
    GetInfo() {
      return Promise.resolve({
        type: "CSIPlugin",
        name: options.pluginName,
        endpoint: options.endpoint,
        supported_versions: [...SUPPORTED_VERSIONS],
      });
    },
    NotifyRegistrationStatus(request) {
      options.onStatus({
        registered: request.plugin_registered === true,
        error: typeof request.error === "string" ? request.error : "",
      });
      return Promise.resolve({});
    },
  };
}
