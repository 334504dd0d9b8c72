/** Small helpers for tests that check the errors bad input produces. */

/**
 * Runs `fn`, which must throw, and returns what it threw so the test can check the error's class
 * and message; fails the test with "expected an error" when `fn` returns normally.
 */
export function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
}
