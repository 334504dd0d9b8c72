/**
 * Give a tiny model attention at one more UNet level, computing exactly what it did before (the
 * new SpatialTransformers start as identities; see src/tiny/grow.ts):
 *
 *     npx ts-node --transpile-only scripts/tiny-add-attention.ts SRC_DIR DST_DIR [LEVEL=2]
 *
 * LEVEL is the downsample factor (2 = the 16×16 grid of the 32×32 model). Then continue training
 * with `npm run train-base -- --init DST_DIR …`. The shipped model was made with
 * `scripts/tiny-add-attention.ts models/tiny out/tiny16-init 2` at step 7,962 (see its model card).
 */
import { useBackend } from "../src/backend/backend";
import { addAttentionLevel } from "../src/tiny/grow";

async function main(): Promise<void> {
  const [src, dst, level = "2"] = process.argv.slice(2);
  if (!src || !dst) {
    console.error("usage: scripts/tiny-add-attention.ts SRC_DIR DST_DIR [LEVEL=2]");
    process.exit(2);
  }
  await useBackend("wasm", { quiet: true });
  const r = addAttentionLevel(src, dst, Number(level));
  console.log(
    `${dst}: attention_resolutions ${JSON.stringify(r.attentionResolutions)}; ${r.added.length} new weights (proj_out zeroed), ${r.moved.length} moved (${r.moved.map(([a, b]) => `${a} → ${b}`).join(", ")})`,
  );
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
