"""deepseek.elastic"""
