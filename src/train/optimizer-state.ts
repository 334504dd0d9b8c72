/**
 * The optimizer's state as data: what `AdamW.exportState` produces and `importState` takes back,
 * and what a `.optim` side file stores (`hypernet/optim-file.ts` reads and writes it).
 */
import type { HostTensor } from "../io/host-tensor";

/** AdamW state for one parameter, in PyTorch layout. */
export interface ParamMoments {
  /** Steps this parameter has been updated (PyTorch keeps it per parameter). */
  step: number;
  expAvg: HostTensor;
  expAvgSq: HostTensor;
}

/** An AdamW optimizer's state, as stored in a `.optim` file. */
export interface OptimizerState {
  name: string;
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** One entry per parameter, in the network's parameter order. */
  params: ParamMoments[];
}
