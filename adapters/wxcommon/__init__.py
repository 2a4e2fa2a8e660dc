"""Shared helpers of the WeChat and WeCom adapters."""
