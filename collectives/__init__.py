"""deepseek.collectives"""
