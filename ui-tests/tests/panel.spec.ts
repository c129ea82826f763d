/**
 * The ipywidgets launch panel rendered in a notebook in JupyterLab, on the local test cluster: choose a
 * model, see the live plan, launch, and get `client` ready; then `%hpcllm down` frees the GPUs.
 */
import { expect, test } from '@jupyterlab/galata';

import { runInLastCell, saveScreenshot } from './helpers';

const MODEL = 'Qwen3-8B';

test.use({ viewport: { width: 1280, height: 1500 } }); // the whole panel, for the README's screenshot

test('launch from the ipywidgets panel in a notebook', async ({ page }) => {
  test.setTimeout(600_000);
  await page.notebook.createNew('panel.ipynb');
  await page.notebook.setCell(0, 'code', 'import jupyter_hpcllm\npanel = jupyter_hpcllm.panel()\npanel');
  await page.notebook.runCell(0);
  const panel = page.locator('.jp-OutputArea-output .widget-vbox').first();
  await expect(panel).toBeVisible({ timeout: 60_000 });

  // The profile's models arrive in the background; choose one as a user would.
  const models = panel.locator('.widget-select select');
  const entry = models.locator('option').filter({ hasText: MODEL }).first();
  await expect(entry).toHaveCount(1, { timeout: 120_000 });
  await models.selectOption({ label: (await entry.textContent()) ?? MODEL });
  await expect(panel).toContainText('tensor-parallel 1', { timeout: 60_000 });
  await expect(panel).toContainText('GPU-hour');

  const launch = panel.locator('button.widget-button').filter({ hasText: 'Launch' });
  await expect(launch).toBeEnabled();
  await launch.click();
  await expect(panel).toContainText(`talks to ${MODEL}`, { timeout: 240_000 });
  await expect(panel).toContainText('Application startup complete', { timeout: 30_000 }); // the log's tail
  await page.sidebar.close('left');
  await panel.evaluate(node => node.scrollIntoView({ block: 'start' }));
  await saveScreenshot(page, 'panel.png');

  // `client` is the notebook's, as after `%hpcllm up`; `%hpcllm down` stops the panel's server.
  const answer = await runInLastCell(
    page,
    `print(client.chat.completions.create(model="${MODEL}", messages=[{"role": "user", "content": "hi from the panel"}]).choices[0].message.content)`
  );
  expect(answer).toContain('Echo: hi from the panel');
  expect(await runInLastCell(page, '%hpcllm down')).toMatch(/Job \d+ cancelled/);
});
