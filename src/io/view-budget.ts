/**
 * How far a torch file's tensors may expand when they are read.
 *
 * torch stores a tensor as a view — (storage, offset, size, stride) — and `torch.load` never expands
 * it. A view can describe far more elements than its storage holds: `zeros(1).expand(2**27)` is a
 * 768-byte file describing 512 MiB of float32; `as_strided(arange(41.), (2,)*40, (1,)*40)` describes
 * 2^40 elements with no zero stride at all. Reading such a tensor into a dense array (which every
 * consumer here needs: tfjs, the writers) costs memory and time in proportion to what the file
 * *describes*, not what it *holds*. Two rules bound that, checked before anything is allocated:
 *
 * 1. **Per tensor.** A tensor may describe at most `VIEW_FACTOR` times the elements of its storage,
 *    unless it is small (at most `VIEW_FLOOR_BYTES` once decoded). Real checkpoints hold views whose
 *    element count is at most their storage's (slices, transposes, tied weights sharing a storage),
 *    plus small broadcasts (CLIP's `position_ids` is `arange(77).expand(1, -1)`: 77 elements over 77)
 *    — all far inside both limits.
 * 2. **Per file.** All tensors read from one opened file together may decode to at most
 *    `TOTAL_FACTOR` × the file's size + `TOTAL_FLOOR_BYTES`. Each tensor counts once however often
 *    it is read. Decoding widens to 32 bits (fp16 → 2×, int8/bool → 4× the stored bytes) and tied
 *    weights are counted per tensor, so a real checkpoint decodes to at most a few times its size;
 *    16× leaves room for that and refuses the file that makes one storage stand for thousands of
 *    tensors (each view within rule 1, together gigabytes).
 *
 * A refusal is an `UnsupportedFileError` naming the file, the tensor and what to do: re-save the
 * tensor with `.contiguous()`/`.clone()` in PyTorch, which makes the file hold what it describes.
 * Describing a file (shapes, dtypes, parameter counts — `inspect`) reads no values and is not limited.
 */
import { UnsupportedFileError } from "./errors";

/** Rule 1: a tensor may have this many times its storage's elements … */
export const VIEW_FACTOR = 4;
/** … unless it decodes to at most this many bytes. */
export const VIEW_FLOOR_BYTES = 16 * 2 ** 20;
/** Rule 2: all tensors of one file together decode to at most this many times the file size … */
export const TOTAL_FACTOR = 16;
/** … plus this many bytes. */
export const TOTAL_FLOOR_BYTES = 64 * 2 ** 20;
/** Bytes per decoded element: every tensor decodes to a Float32Array or an Int32Array. */
const DECODED_BYTES = 4;

/** What a budget check needs to know about the view being read. */
export interface ViewFacts {
  /** The file, for the error message. */
  file: string;
  /** How the caller knows the tensor (a state-dict key or a path of keys), if it does. */
  name?: string;
  /** The storage's key inside the file. */
  storageKey: string;
  /** Elements the storage holds. */
  storageNumel: number;
  shape: readonly number[];
  stride: readonly number[];
  /** Elements the view describes (the product of `shape`). */
  numel: number;
}

function mib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function tensorName(f: ViewFacts): string {
  return f.name !== undefined ? `tensor "${f.name}"` : `the tensor in storage "${f.storageKey}"`;
}

const REMEDY =
  "If the file is meant to hold these values, load it in PyTorch and save each tensor with .contiguous() (or .clone()) so that the file stores what it describes.";

/**
 * Rule 1 (see the module comment): refuse a view that would expand far beyond its storage.
 * Needs no per-file state, so it also applies to pickles read outside a container.
 */
export function checkViewExpansion(f: ViewFacts): void {
  const bytes = f.numel * DECODED_BYTES;
  if (f.numel <= VIEW_FACTOR * f.storageNumel || bytes <= VIEW_FLOOR_BYTES) return;
  throw new UnsupportedFileError(
    f.file,
    `${tensorName(f)} is a view of ${f.numel.toLocaleString("en-US")} elements (shape [${f.shape.join(", ")}], stride (${f.stride.join(", ")})) over a storage of ${f.storageNumel.toLocaleString("en-US")} element${f.storageNumel === 1 ? "" : "s"}: reading it would take ${mib(bytes)} for values the file does not hold (broadcast or overlapping view). Refusing to expand it. ${REMEDY}`,
  );
}

/**
 * Rule 2: the running total of bytes decoded from one opened file. Create one per open file and
 * `charge` each tensor before allocating it.
 */
export class ReadBudget {
  private used = 0;
  private readonly counted = new WeakSet<object>();
  /** Most bytes all tensors of this file may decode to. */
  readonly limit: number;

  constructor(
    readonly file: string,
    /** The file's size in bytes, from `fstat`: what the file really holds. */
    readonly fileSize: number,
  ) {
    this.limit = TOTAL_FACTOR * fileSize + TOTAL_FLOOR_BYTES;
  }

  /** Bytes charged so far. */
  get charged(): number {
    return this.used;
  }

  /** Count `tensor` (once) as decoding to `numel` 32-bit values; throw if the file's total would pass the limit. */
  charge(tensor: object, f: ViewFacts): void {
    if (this.counted.has(tensor)) return;
    const bytes = f.numel * DECODED_BYTES;
    if (this.used + bytes > this.limit) {
      throw new UnsupportedFileError(
        this.file,
        `reading ${tensorName(f)} (${mib(bytes)}) would bring the values read from this ${this.fileSize.toLocaleString("en-US")}-byte file to ${mib(this.used + bytes)}, more than ${TOTAL_FACTOR} × its size + ${mib(TOTAL_FLOOR_BYTES)}: its tensors are views that repeat the same stored values many times. Refusing to expand them. ${REMEDY}`,
      );
    }
    this.used += bytes;
    this.counted.add(tensor);
  }
}
