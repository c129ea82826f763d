import { describe, expect, it } from 'vitest';

import { clientCode, fingerprint, nextInterval, serverCard } from './logic';
import type { MetricsModel, ServerModel } from './models';

const running: ServerModel = {
  job_id: '1234', state: 'RUNNING', model: 'gpt-oss-120b', engine: 'vllm', node: 'gpu01', gpus: '1 × h200',
  time_left: '3:59:10', seconds_left: 14350, reason: null, expected_start: null,
  idle: 'idle 12 min, ends itself in 48 min', ended_idle: false, left: '3:59:10', walltime_warning: null
};
const metrics: MetricsModel = {
  job_id: '1234', running: 2, waiting: 0, kv_cache: 0.34, tokens_per_second: 53, generation_tokens: 1000,
  rows: [['requests', '2 running, 0 waiting'], ['generation', '53 tokens/s'], ['KV cache', '34 % used']]
};

describe('serverCard', () => {
  it('shows the engine, state, GPUs, node, time left, idle time and the live numbers', () => {
    const card = serverCard(running, metrics);
    expect(card.title).toBe('gpt-oss-120b (job 1234)');
    expect(card.lines).toEqual([
      'vllm · RUNNING · 1 × h200', 'on gpu01', '3:59:10 left', 'idle 12 min, ends itself in 48 min',
      'requests: 2 running, 0 waiting', 'generation: 53 tokens/s', 'KV cache: 34 % used'
    ]);
    expect(card.renewable).toBe(false);
  });

  it('says why a pending job waits, and offers Renew near the time limit', () => {
    const pending = { ...running, state: 'PENDING', node: null, time_left: null, idle: null, left: '(Resources)' };
    expect(serverCard(pending, null).lines).toEqual(['vllm · PENDING · 1 × h200', 'waiting: (Resources)']);
    const late = { ...running, walltime_warning: 'Job 1234 reaches its time limit in 5 min' };
    expect(serverCard(late, null)).toMatchObject({ renewable: true, warning: late.walltime_warning });
  });
});

describe('clientCode', () => {
  it('attaches the kernel to the job on its profile', () => {
    expect(clientCode(running, 'ebi').split('\n').slice(0, 2)).toEqual([
      '%load_ext jupyter_hpcllm', '%hpcllm attach 1234 --profile ebi'
    ]);
    expect(clientCode(running, "my cluster's")).toContain("--profile 'my clusters'");
  });
});

describe('nextInterval', () => {
  it('backs off while nothing changes, and starts over when something does', () => {
    expect(nextInterval(10_000, false, 10_000, 120_000)).toBe(20_000);
    expect(nextInterval(80_000, false, 10_000, 120_000)).toBe(120_000);
    expect(nextInterval(120_000, true, 10_000, 120_000)).toBe(10_000);
  });

  it('tells a change from the same servers', () => {
    expect(fingerprint([running])).toBe(fingerprint([{ ...running }]));
    expect(fingerprint([running])).not.toBe(fingerprint([{ ...running, state: 'COMPLETING' }]));
  });
});
