/**
 * Error kinds raised by the file readers, so that callers (and tests) can tell a damaged file from
 * a dangerous one from one that is merely unusual.
 */

/** The file is damaged, truncated, or internally inconsistent (bad offsets, sizes, CRCs, …). */
export class CorruptFileError extends Error {
  constructor(
    readonly file: string,
    readonly detail: string,
  ) {
    super(`${file}: ${detail}`);
    this.name = "CorruptFileError";
  }
}

/**
 * The pickle asks for something other than tensors and plain containers: importing a global that
 * is not on the whitelist, calling it, or building a foreign object. Nothing was executed; the file
 * should not be opened with `torch.load` either.
 */
export class UnsafePickleError extends Error {
  constructor(
    readonly file: string,
    /** The refused global as `module.name`, when a global was the cause. */
    readonly global: string | undefined,
    readonly detail: string,
  ) {
    super(`${file}: ${detail}`);
    this.name = "UnsafePickleError";
  }
}

/** The file is well formed but uses a feature this reader does not handle (compression, sets, …). */
export class UnsupportedFileError extends Error {
  constructor(
    readonly file: string,
    readonly detail: string,
  ) {
    super(`${file}: ${detail}`);
    this.name = "UnsupportedFileError";
  }
}
