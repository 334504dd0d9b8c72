/**
 * The ldm-tiny UNet fixture (PyTorch-made, see test/fixtures/README.md) with its sample inputs, for
 * tests that attach hypernetworks to a real UNet: widths 32 and 64 (self-attention) and 40 (context).
 */
import * as fs from "node:fs";
import * as tf from "@tensorflow/tfjs";
import type { HostTensor } from "../../src/io/host-tensor";
import { readSafetensors } from "../../src/io/safetensors";
import { zerosInit } from "../../src/nn/module";
import { fromJson } from "../../src/unet/config";
import { loadUNetWeights } from "../../src/unet/load";
import { UNetModel } from "../../src/unet/unet";
import { fixture } from "./tf";

/** The loaded fixture: the UNet, its inputs (NHWC latents, timesteps, context) and the reference outputs. */
export interface LdmTiny {
  unet: UNetModel;
  io: Map<string, HostTensor>;
  x: tf.Tensor4D;
  t: number[];
  ctx: tf.Tensor3D;
  /** Run the UNet on the fixture inputs (or other timesteps), NCHW floats like the fixture. */
  eps(t?: number[]): Float32Array;
  dispose(): void;
}

/** Load ldm-tiny (call after the backend is set up). */
export function loadLdmTiny(): LdmTiny {
  const unet = new UNetModel(fromJson(JSON.parse(fs.readFileSync(fixture("ldm-tiny.config.json"), "utf8"))), { init: zerosInit });
  loadUNetWeights(unet, fixture("ldm-tiny.unet.safetensors"));
  const io = readSafetensors(fixture("ldm-tiny.io.safetensors")).tensors;
  const xs = io.get("x")!;
  const x = tf.tidy(() =>
    tf.tensor4d(xs.data as Float32Array, xs.shape as [number, number, number, number]).transpose<tf.Tensor4D>([0, 2, 3, 1]),
  );
  const t = [...io.get("t")!.data];
  const c = io.get("context")!;
  const ctx = tf.tensor3d(c.data as Float32Array, c.shape as [number, number, number]);
  return {
    unet,
    io,
    x,
    t,
    ctx,
    eps: (tt = t) => tf.tidy(() => unet.forward(x, tt, ctx).transpose([0, 3, 1, 2]).dataSync() as Float32Array),
    dispose: () => {
      x.dispose();
      ctx.dispose();
      unet.dispose();
    },
  };
}
