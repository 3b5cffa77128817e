"""deepseek.launcher"""
