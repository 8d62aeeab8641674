/** How large a run is: the counts each phase measures over, full or quick. */

/** The counts of a run; `--sizes` overrides any of them. */
export interface Sizes {
  cycles: number;
  republishes: number;
  burst: number;
  starts: number;
  kills: number;
  soakCycles: number;
  idleSeconds: number;
  execPairs: number;
  /** Unrelated mounts for the scaling phase, and the cycles measured at each count. */
  levels: Array<[mounts: number, cycles: number]>;
}

/** The full run (tens of minutes). */
export const FULL: Sizes = {
  cycles: 2000,
  republishes: 1000,
  burst: 110,
  starts: 20,
  kills: 10,
  soakCycles: 10_000,
  idleSeconds: 60,
  execPairs: 200,
  levels: [[0, 300], [1_000, 300], [10_000, 100], [30_000, 40]],
};

/** The quick run (a few seconds), for CI. */
export const QUICK: Sizes = {
  cycles: 50,
  republishes: 20,
  burst: 20,
  starts: 2,
  kills: 1,
  soakCycles: 100,
  idleSeconds: 1,
  execPairs: 20,
  levels: [[0, 20], [100, 20]],
};
