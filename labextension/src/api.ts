/** Requests to the server extension's /hpcllm/ endpoints (with the Jupyter server's token and XSRF). */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { ErrorModel } from './models';

/** An endpoint's error: its one-paragraph message, and the launch option at fault. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null
  ) {
    super(message);
  }
}

export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'hpcllm', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`The Jupyter server cannot be reached: ${String(error)}`, 0, null);
  }
  const text = await response.text();
  const body = text ? JSON.parse(text) : {};
  if (!response.ok) {
    const error = body as ErrorModel;
    throw new ApiError(error.error ?? response.statusText, response.status, error.field ?? null);
  }
  return body as T;
}
