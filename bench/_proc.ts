/** Readings from /proc: a process's memory and CPU time, the load average, the mount count. */

// Deno refuses /proc paths without --allow-all; this process does not need that, so it asks cat.
/** The text of a /proc file, read through cat. */
export function readProc(path: string): string {
  return new TextDecoder().decode(
    new Deno.Command("/usr/bin/cat", { args: [path] }).outputSync().stdout,
  );
}

/** The resident set size of process `pid`, in MiB. */
export function rssMiB(pid: number): number {
  const status = readProc(`/proc/${pid}/status`);
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  return kb / 1024;
}

/** CPU seconds of the process itself, and with its waited-for children (mount, umount). */
export function cpuSeconds(pid: number): { own: number; all: number } {
  const fields = readProc(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  // utime, stime, cutime, cstime are fields 14-17 of stat, i.e. 11-14 after "pid (comm) ".
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]) / 100);
  const own = utime! + stime!;
  return { own, all: own + cutime! + cstime! };
}

/** The load average (1, 5, 15 minutes) as /proc/loadavg has it. */
export function load(): string {
  return readProc("/proc/loadavg").split(" ").slice(0, 3).join(" ");
}

/** How many mounts this mount namespace has. */
export function mountCount(): number {
  return readProc("/proc/self/mountinfo").split("\n").filter((l) => l !== "").length;
}
