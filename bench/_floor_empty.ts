/** The start-up floor's first module: nothing, so Deno starts and exits (start_floor.ts). */
export {};
