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
 * - in a mount or umount child, `/proc/self/cwd`: the child starts in `link` (its chdir(2) follows
 *   the child's own `/proc/self/cwd`, which it inherited from the driver when it was cloned, so
 *   nothing walks the pinned directory's path again). The path is spelled with a random run of `.`
 *   components each time (`procSelfCwd`): umount looks a target it cannot find in the mount table
 *   up as a mount SOURCE next, and anyone who can mount can name a source `/proc/self/cwd`.
 *
 * The working directory is one per process, so pinned sections never overlap while they pin. A
 * section keeps the pin while its child runs, unless it starts the child with `aside`: the child
 * stands in the directory itself then, and other sections pin from its start until it has
 * exited. Inside a section, pinning is the only way to get a handle on a directory, and each pin
 * makes every earlier handle of the section invalid, as `aside` and the section's end do.
 */
import { errorMessage } from "../errors.ts";
import type { MountTarget } from "./mounter.ts";

/** The pinned directory is not where it was asked to be: a symlink, or a rename while in use. */
export class PinMovedError extends Error {
  override name = "PinMovedError";
  /** Where it is instead (undefined when getcwd failed: the directory was removed or detached). */
  readonly actual: string | undefined;

  constructor(expected: string, actual: string | undefined) {
    super(
      actual === undefined
        ? `${expected} changed while in use`
        : `${expected} resolves through a symlink (to ${actual})`,
    );
    this.actual = actual;
  }
}

/** Options for PinSection.at. */
export interface PinOptions {
  /** Accept a directory getcwd cannot name, as it was removed (a template of a gone socket dir). */
  removed?: boolean;
}

/** A section holding the pin: the only way to pin a directory, until the section ends. */
export interface PinSection {
  /** Pins `dir` (absolute): walks it from `/`, then verifies with getcwd that it arrived there. */
  at(dir: string, options?: PinOptions): PinnedDir;
  /**
   * Calls `start` with `dir` for a child; from the moment the child has started (`started`),
   * other sections pin until the child's promise settles. Every handle of this section is
   * invalid afterwards: pin again.
   */
  aside<T>(dir: PinnedDir, start: (target: MountTarget) => Promise<T>): Promise<T>;
}

/** A verified pinned directory; valid until the next pin of its section or the section's end. */
export interface PinnedDir {
  /** The verified absolute path of the pinned directory. */
  readonly path: string;
  /** Pins `name` inside this directory (crossing a mount on it) and verifies it. */
  into(name: string): PinnedDir;
  /** This process's path to `name` inside the pinned directory, or to the directory itself. */
  inside(name?: string): string;
  /** Where the pinned directory is now (it may have been renamed); undefined when unreachable. */
  locate(): string | undefined;
  /** True when the pinned directory is `dir` (same device and inode), e.g. a bind of it. */
  isSame(dir: string): boolean;
  /** The pinned directory for a mount or umount child started while it is held (new spelling). */
  mountTarget(): MountTarget;
}

/** Options for DirPin. */
export interface DirPinOptions {
  /** A symlink to `/proc/self/cwd` that the permission set allows reading and writing through. */
  link: string;
}

/** The process's working directory as a pinned directory reference, one section at a time. */
export class DirPin {
  readonly #link: string;
  readonly #turn = new Turn();

  constructor(options: DirPinOptions) {
    this.#link = options.link;
  }

  /** Runs `work` in a section of its own; sections pin one at a time, in the order they asked. */
  async hold<T>(work: (section: PinSection) => Promise<T> | T): Promise<T> {
    await this.#turn.take();
    const section = new Section(this.#link, this.#turn);
    try {
      return await work(section);
    } finally {
      section.end();
      this.#turn.give();
    }
  }

  /** Checks that `link` reaches the directory the pin is at, by pinning `dir` (an allowed directory). */
  check(dir: string): Promise<void> {
    let target: string;
    try {
      target = Deno.readLinkSync(this.#link);
    } catch (error) {
      const why = errorMessage(error);
      return Promise.reject(new Error(`${this.#link} is not a symlink to /proc/self/cwd: ${why}`));
    }
    if (target !== "/proc/self/cwd") {
      return Promise.reject(new Error(`${this.#link} points to ${target}, not to /proc/self/cwd`));
    }
    return this.hold((section) => {
      if (!section.at(dir).isSame(dir)) {
        throw new Error(`${this.#link} does not reach the working directory`);
      }
    });
  }
}

/** Who holds the working directory: one section at a time, the others queued in order. */
class Turn {
  #taken = false;
  readonly #queue: (() => void)[] = [];

  take(): Promise<void> {
    if (!this.#taken) {
      this.#taken = true;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#queue.push(resolve));
  }

  give(): void {
    const next = this.#queue.shift();
    if (next) next();
    else this.#taken = false;
  }
}

class Section implements PinSection {
  readonly link: string;
  /** The one valid handle: none between a chdir and its verification, aside, and after the end. */
  current: Pinned | undefined;
  readonly #turn: Turn;
  #ended = false;

  constructor(link: string, turn: Turn) {
    this.link = link;
    this.#turn = turn;
  }

  at(dir: string, options: PinOptions = {}): PinnedDir {
    return this.pin(dir, dir, options.removed ?? false);
  }

  async aside<T>(dir: PinnedDir, start: (target: MountTarget) => Promise<T>): Promise<T> {
    let aside = false;
    const started = () => {
      if (aside || this.current !== dir) return;
      aside = true;
      this.current = undefined;
      this.#turn.give();
    };
    try {
      return await start({ ...dir.mountTarget(), started });
    } finally {
      this.current = undefined;
      if (aside) await this.#turn.take();
    }
  }

  /** chdir to `walk`, then getcwd must say `expected`. */
  pin(walk: string, expected: string, removed = false): Pinned {
    if (this.#ended) throw new Error("the pinned section has ended");
    this.current = undefined;
    Deno.chdir(walk);
    const actual = cwd();
    if (actual !== expected && !(removed && actual === undefined)) {
      throw new PinMovedError(expected, actual);
    }
    this.current = new Pinned(this, expected);
    return this.current;
  }

  end(): void {
    this.#ended = true;
    this.current = undefined;
  }
}

class Pinned implements PinnedDir {
  readonly #section: Section;
  readonly path: string;

  constructor(section: Section, path: string) {
    this.#section = section;
    this.path = path;
  }

  into(name: string): PinnedDir {
    return this.#section.pin(this.inside(name), `${this.path}/${name}`);
  }

  inside(name?: string): string {
    this.#held();
    return name === undefined ? this.#section.link : `${this.#section.link}/${name}`;
  }

  locate(): string | undefined {
    this.#held();
    return cwd();
  }

  isSame(dir: string): boolean {
    return sameFile(this.inside(), dir);
  }

  mountTarget(): MountTarget {
    this.#held();
    return { path: this.path, cwd: this.#section.link, childPath: procSelfCwd() };
  }

  #held(): void {
    if (this.#section.current !== this) throw new Error(`the pin on ${this.path} is not held`);
  }
}

function cwd(): string | undefined {
  try {
    return Deno.cwd();
  } catch {
    return undefined;
  }
}

/**
 * `/proc/self/cwd` with 32 random bits spelled as runs of `.` components (at most 1 KiB more):
 * the kernel walks it to the same directory, but no mount source can be prepared to equal it,
 * so umount's fallback from target to source lookup never finds someone else's mount.
 */
function procSelfCwd(): string {
  const [a, b, c, d] = crypto.getRandomValues(new Uint8Array(4));
  const dots = (count = 0) => "./".repeat(count);
  return `/${dots(a)}proc/${dots(b)}self/${dots(c)}cwd${"/.".repeat(d ?? 0)}`;
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
