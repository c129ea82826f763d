/**
 * The "HPC LLM" sidebar on the local Slurm test cluster (engine double on fake GPUs): launch from its form
 * (checked live), watch the launch become ready with live metrics, insert the client code into a notebook
 * and run it, see the status bar item and the log viewer, then stop the server and see the sidebar empty.
 */
import { expect, test } from '@jupyterlab/galata';

import { openSidebar, runInLastCell, saveScreenshot, SIDEBAR } from './helpers';

const MODEL = 'Qwen3-8B';
const READY_TIMEOUT = 240_000; // submit, queue, the engine double's start-up and weights

test.describe.configure({ mode: 'serial' });

test('the sidebar opens, names itself, lists the profiles and has palette entries', async ({ page }) => {
  const tab = page.sidebar.getTabLocator(SIDEBAR);
  await expect(tab).toHaveAttribute('title', 'HPC LLM: your model servers on the cluster');
  const sidebar = await openSidebar(page);
  await expect(sidebar.locator('h2')).toHaveText('HPC LLM');
  await expect(sidebar.locator('select.jp-hpcllm-profile option')).toContainText(['testcluster']);
  await expect(sidebar.locator('.jp-hpcllm-empty')).toHaveText('No servers of yours on this profile.');
  await page.keyboard.press('Control+Shift+C');
  await page.locator('.lm-CommandPalette-input').fill('HPC LLM');
  await expect(page.locator('.lm-CommandPalette-item')).toContainText([
    'HPC LLM: Launch a model server…',
    'HPC LLM: Refresh the servers',
    'HPC LLM: Show my cluster LLM servers'
  ]);
});

test('launch from the sidebar, use it from a notebook, stop it', async ({ page }) => {
  test.setTimeout(600_000);
  await page.notebook.createNew('client.ipynb');
  const sidebar = await openSidebar(page);

  // The form: the options' one definition, planned live, the option at fault outlined.
  await sidebar.getByRole('button', { name: 'New server…' }).click();
  const form = sidebar.locator('form.jp-hpcllm-form');
  const field = (name: string) => form.locator(`[name="${name}"]`);
  await expect(field('model')).toBeVisible();
  for (const name of ['gpus', 'gpu_type', 'engine', 'time', 'tool_call_parser', 'reasoning_parser']) {
    await expect(field(name)).toHaveCount(1);
  }
  await expect(field('time')).toHaveAttribute('placeholder', 'default: 1:00:00');
  await expect(form.locator(`datalist option[value="${MODEL}"]`)).toHaveCount(1); // the profile's models
  await field('model').fill(MODEL);
  await field('gpus').fill('9');
  await expect(form.locator('.jp-hpcllm-plan .jp-hpcllm-error')).toContainText('Cannot launch:');
  await expect(field('gpus')).toHaveClass(/jp-hpcllm-invalid/);
  const launch = form.getByRole('button', { name: 'Launch' });
  await expect(launch).toBeDisabled();
  await field('gpus').fill('');
  await field('time').fill('0:30:00');
  await expect(form.locator('.jp-hpcllm-plan .jp-hpcllm-title')).toContainText('1 × a100, tensor-parallel 1');
  await expect(form.locator('.jp-hpcllm-plan')).toContainText('GPU-hour');
  await expect(field('gpus')).not.toHaveClass(/jp-hpcllm-invalid/);
  await expect(launch).toBeEnabled();
  await launch.click();

  // Its progress until ready, then a notification.
  const progress = sidebar.locator('.jp-hpcllm-launch');
  await expect(progress).toHaveCount(1);
  await expect(progress).toContainText(MODEL);
  await expect(progress).toHaveAttribute('data-outcome', 'ready', { timeout: READY_TIMEOUT });
  const job = (/\(job (\d+)\)/.exec((await progress.textContent()) ?? '') ?? [])[1];
  expect(job).toMatch(/^\d+$/);
  await expect(page.locator('.Toastify__toast').filter({ hasText: `${MODEL} is ready (job ${job})` })).toBeVisible();

  // The server with its live metrics.
  const card = sidebar.locator(`.jp-hpcllm-server[data-job="${job}"]`);
  await expect(card).toHaveAttribute('data-state', 'RUNNING', { timeout: 60_000 });
  await expect(card).toContainText('on gpu0');
  await expect(card).toContainText('requests: 0 running, 0 waiting', { timeout: 60_000 });
  await expect(card).toContainText('KV cache:');

  // Insert client code into the notebook (its empty first cell) and run it: `client` answers.
  await page.notebook.activate('client.ipynb');
  await card.getByRole('button', { name: 'Insert client code' }).click();
  expect(await page.notebook.getCellTextInput(0)).toContain(`%hpcllm attach ${job} --profile testcluster`);
  await page.notebook.runCell(0);
  expect((await page.notebook.getCellTextOutput(0))?.join('')).toContain(`talks to ${MODEL}`);
  const answer = await runInLastCell(
    page,
    `print(client.chat.completions.create(model="${MODEL}", messages=[{"role": "user", "content": "hi from the sidebar"}]).choices[0].message.content)`
  );
  expect(answer).toContain('Echo: hi from the sidebar');

  // The status bar names the notebook's server and its time left.
  const status = page.locator('.jp-hpcllm-status');
  await expect(status).toContainText(`HPC LLM: ${MODEL} · job ${job} ·`, { timeout: 30_000 });
  await expect(status).toContainText(/\d+:\d\d left/);
  await saveScreenshot(page, 'sidebar.png');

  // The log viewer follows the engine's log.
  await card.getByRole('button', { name: 'Logs' }).click();
  const log = page.locator('.jp-hpcllm-logviewer');
  await expect(log).toBeVisible();
  await expect(log.locator('.jp-hpcllm-logtext')).toContainText('Application startup complete', { timeout: 30_000 });
  await expect(page.locator('.lm-TabBar-tab').filter({ hasText: `Log: job ${job}` })).toHaveCount(1);

  // Stop: the sidebar says so and is empty again; the notebook's status bar item goes.
  await card.getByRole('button', { name: 'Stop' }).click();
  await expect(sidebar.locator('.jp-hpcllm-message')).toContainText(`Job ${job} cancelled`, { timeout: 60_000 });
  await expect(sidebar.locator('.jp-hpcllm-empty')).toBeVisible({ timeout: 90_000 });
  await expect(card).toHaveCount(0);
});

test('near its time limit: a notification, Renew, and the notebook follows the successor', async ({ page }) => {
  test.setTimeout(600_000);
  await page.notebook.createNew('renew.ipynb');
  const sidebar = await openSidebar(page);
  await sidebar.getByRole('button', { name: 'New server…' }).click();
  const form = sidebar.locator('form.jp-hpcllm-form');
  await form.locator('[name="model"]').fill(MODEL);
  await form.locator('[name="time"]').fill('0:09:00'); // inside the profile's 10-minute warning at once
  const launch = form.getByRole('button', { name: 'Launch' });
  await expect(launch).toBeEnabled({ timeout: 30_000 });
  await launch.click();
  const progress = sidebar.locator('.jp-hpcllm-launch');
  await expect(progress).toHaveAttribute('data-outcome', 'ready', { timeout: READY_TIMEOUT });
  const old = (/\(job (\d+)\)/.exec((await progress.textContent()) ?? '') ?? [])[1];
  await progress.getByRole('button', { name: 'Dismiss' }).click();

  const card = sidebar.locator(`.jp-hpcllm-server[data-job="${old}"]`);
  await expect(card.locator('.jp-hpcllm-warning')).toContainText('time limit', { timeout: 60_000 });
  await expect(page.locator('.Toastify__toast').filter({ hasText: `Job ${old}` }).first()).toBeVisible();
  await page.notebook.activate('renew.ipynb');
  await card.getByRole('button', { name: 'Insert client code' }).click();
  await page.notebook.runCell(0);
  expect((await page.notebook.getCellTextOutput(0))?.join('')).toContain(`talks to ${MODEL}`);

  await card.getByRole('button', { name: 'Renew' }).click();
  const renewal = sidebar.locator('.jp-hpcllm-launch');
  await expect(renewal).toHaveAttribute('data-outcome', 'ready', { timeout: READY_TIMEOUT });
  const successor = (/\(job (\d+)\)/.exec((await renewal.textContent()) ?? '') ?? [])[1];
  expect(successor).not.toBe(old);
  await expect(sidebar.locator(`.jp-hpcllm-server[data-job="${successor}"]`)).toHaveCount(1, { timeout: 60_000 });
  await expect(card).toHaveCount(0, { timeout: 90_000 }); // the old job stopped after the grace

  // The notebook's `client`, made for the old job, now reaches the successor (same address, same key).
  const answer = await runInLastCell(
    page,
    `print(client.chat.completions.create(model="${MODEL}", messages=[{"role": "user", "content": "after the renewal"}]).choices[0].message.content)`
  );
  expect(answer).toContain('Echo: after the renewal');
  await expect(page.locator('.jp-hpcllm-status')).toContainText(`job ${successor}`, { timeout: 30_000 });
  expect(await runInLastCell(page, '%hpcllm down')).toMatch(new RegExp(`Job ${successor} cancelled`));
});
