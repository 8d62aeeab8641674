/**
 * Race-free directory references for a process that can only name files by path.
 *
 * Deno has no openat(2): every path it is given, relative ones included, is walked again from `/`
 * by the kernel, so a symlink swapped into any component redirects the call. The one directory
 * reference Deno can hold is the working directory: chdir(2) pins the directory itself, and
 * getcwd(2) says truthfully where that directory is. Two names reach the pinned directory without
 * walking its path again:
 *
 * - in this process, `link`, a symlink to `/proc/self/cwd` that the permission set allows (Deno
 *   checks the string; the kernel follows the magic link to the directory itself);
 * - in a mount or umount child, `/proc/<driver pid>/cwd`, spelled with a random run of `.`
 *   components each time (`childPath`): umount looks a target it cannot find in the mount table
 *   up as a mount SOURCE next, and anyone who can mount can name a source `/proc/1/cwd`.
 *
 * The working directory is one per process, so pinned sections never overlap: a section keeps the
 * pin until every child it started has exited.
 */

/** The pinned directory is not where it was asked to be: a symlink, or a rename while in use. */
export class PinMovedError extends Error {
  override name = "PinMovedError";
  /** The path the pin was asked to reach. */
  readonly expected: string;
  /** Where it is instead (undefined when getcwd failed: the directory was removed or detached). */
  readonly actual: string | undefined;

  constructor(expected: string, actual: string | undefined) {
    super(
      actual === undefined
        ? `${expected} changed while in use`
        : `${expected} resolves through a symlink (to ${actual})`,
    );
    this.expected = expected;
    this.actual = actual;
  }
}

/** The pin inside a section: where it is, and the names that reach it. */
export interface Pin {
  /** The verified absolute path of the pinned directory. */
  readonly where: string;
  /** A path a mount/umount child resolves to the pinned directory itself; new each call. */
  childPath(): string;
  /** Pins `dir` (absolute): walks it from `/`, then verifies with getcwd that it arrived there. */
  at(dir: string): void;
  /** Moves the pin into `name` inside the pinned directory (crossing a mount on it) and verifies. */
  into(name: string): void;
  /** Where the pinned directory is now (it may have been renamed); undefined when unreachable. */
  locate(): string | undefined;
  /** This process's path to `name` inside the pinned directory, or to the directory itself. */
  path(name?: string): string;
}

/** Options for DirPin. */
export interface DirPinOptions {
  /** A symlink to `/proc/self/cwd` that the permission set allows reading and writing through. */
  link: string;
}

/** The process's working directory as a pinned directory reference, one section at a time. */
export class DirPin {
  readonly #link: string;
  #tail: Promise<unknown> = Promise.resolve();

  constructor(options: DirPinOptions) {
    this.#link = options.link;
  }

  /** Runs `work` with the pin; sections run one after another, never interleaved. */
  hold<T>(work: (pin: Pin) => Promise<T> | T): Promise<T> {
    const run = () => work(this.#section());
    const result = this.#tail.then(run, run);
    this.#tail = result.then(() => {}, () => {});
    return result;
  }

  /** Checks that `link` reaches the directory the pin is at, by pinning `dir` (an allowed directory). */
  check(dir: string): Promise<void> {
    let target: string;
    try {
      target = Deno.readLinkSync(this.#link);
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      return Promise.reject(new Error(`${this.#link} is not a symlink to /proc/self/cwd: ${why}`));
    }
    if (target !== "/proc/self/cwd") {
      return Promise.reject(new Error(`${this.#link} points to ${target}, not to /proc/self/cwd`));
    }
    return this.hold((pin) => {
      pin.at(dir);
      if (!sameFile(pin.path(), dir)) {
        throw new Error(`${this.#link} does not reach the working directory`);
      }
    });
  }

  #section(): Pin {
    const link = this.#link;
    let where = "";
    const locate = () => {
      try {
        return Deno.cwd();
      } catch {
        return undefined;
      }
    };
    const verify = (expected: string) => {
      const actual = locate();
      if (actual !== expected) throw new PinMovedError(expected, actual);
      where = expected;
    };
    return {
      get where() {
        return where;
      },
      childPath: () => procCwdPath(Deno.pid),
      at(dir) {
        try {
          Deno.chdir(dir);
        } catch (error) {
          where = "";
          throw error;
        }
        verify(dir);
      },
      into(name) {
        if (where === "") throw new Error("into() without a pinned directory");
        const expected = `${where}/${name}`;
        where = "";
        Deno.chdir(`${link}/${name}`);
        verify(expected);
      },
      locate,
      path(name) {
        return name === undefined ? link : `${link}/${name}`;
      },
    };
  }
}

/**
 * `/proc/<pid>/cwd` with 32 random bits spelled as runs of `.` components (at most 1 KiB more):
 * the kernel walks it to the same directory, but no mount source can be prepared to equal it,
 * so umount's fallback from target to source lookup never finds someone else's mount.
 */
export function procCwdPath(pid: number): string {
  const [a, b, c, d] = crypto.getRandomValues(new Uint8Array(4));
  const dots = (count = 0) => "./".repeat(count);
  return `/${dots(a)}proc/${dots(b)}${pid}/${dots(c)}cwd${"/.".repeat(d ?? 0)}`;
}

/** True when `a` and `b` are the same directory (device and inode); false when either cannot be stat'ed. */
export function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino !== null && x.ino === y.ino;
  } catch {
    return false;
  }
}
